// Plain words for fax statuses, names of references, the E.164 check and CSV: no requests, no DOM.

export const EXT_STATUS = "outbound-fax-status";
export const EXT_PAGES = "fax-pages";
export const STEPS = ["QUEUED", "PROCESSING", "SENDING", "DELIVERED"];
const WORDS = {
  QUEUED: "Queued",
  PROCESSING: "Preparing the pages",
  SENDING: "Sending",
  DELIVERED: "Delivered",
  STOPPED: "Stopped",
  RETRYING: "Waiting to try again",
  RECEIVED: "Received",
};

/** The E.164 form: a plus, a country code that does not start with 0, at most 15 digits in all. */
export const E164 = /^\+[1-9]\d{6,14}$/;

export function checkNumber(text) {
  const value = text.replace(/[\s().-]/g, "");
  if (value === "") return { ok: false, message: "" };
  if (!value.startsWith("+")) return { ok: false, message: "Start with + and the country code, e.g. +1 for the US." };
  if (!/^\+\d*$/.test(value)) return { ok: false, message: "Only digits may follow the +." };
  if (value.startsWith("+0")) return { ok: false, message: "A country code never starts with 0." };
  if (!E164.test(value)) return { ok: false, message: "An international number has 7 to 15 digits after the +." };
  return { ok: true, value, message: `Will fax ${value}.` };
}

function extension(resource, suffix) {
  return (resource.extension || []).find((e) => e.url.endsWith(suffix));
}

/** The fax's outbound status code (QUEUED ... DELIVERED), or STOPPED, from the resource alone. */
export function statusCode(communication) {
  const found = extension(communication, EXT_STATUS);
  const code = found?.valueCodeableConcept?.coding?.[0]?.code;
  if (communication.status === "stopped") return "STOPPED";
  if (extension(communication, "inbound-fax-status")) return "RECEIVED"; // a received fax, not one sent
  if (code) return code;
  return communication.status === "completed" ? "DELIVERED" : "QUEUED";
}

export function finished(communication) {
  return ["completed", "stopped", "entered-in-error"].includes(communication.status);
}

/** "Delivered", or "Stopped: The line was busy." */
export function statusWords(communication) {
  const code = statusCode(communication);
  const word = WORDS[code] || code.toLowerCase();
  if (code !== "STOPPED") return word;
  const reason = communication.statusReason?.text || communication.statusReason?.coding?.[0]?.code;
  return reason ? `${word}: ${reason}` : `${word} (no reason given)`;
}

export function pageCount(communication) {
  const found = extension(communication, EXT_PAGES);
  return found && Number.isInteger(found.valueInteger) ? found.valueInteger : null;
}

/** A person's or an organization's name as one line. */
export function nameOf(resource) {
  if (!resource) return "";
  if (typeof resource.name === "string") return resource.name;
  if (resource.deviceName?.[0]?.name) return resource.deviceName[0].name; // a received fax's caller
  const name = Array.isArray(resource.name) ? resource.name[0] : null;
  if (name) return name.text || [...(name.prefix || []), ...(name.given || []), name.family].filter(Boolean).join(" ");
  const fax = (resource.telecom || []).find((t) => t.system === "fax");
  return fax ? `Fax ${fax.value}` : `${resource.resourceType}/${resource.id}`;
}

export function faxNumberOf(resource) {
  return (resource?.telecom || []).find((t) => t.system === "fax")?.value || "";
}

export function when(instant) {
  if (!instant) return "";
  const date = new Date(instant);
  return Number.isNaN(date.getTime()) ? instant : date.toLocaleString();
}

function csvCell(value) {
  const text = String(value ?? "");
  // A leading = + - @ would be a formula in a spreadsheet: quote it as text.
  const safe = /^[=+\-@\t\r]/.test(text) ? `'${text}` : text;
  return /[",\n\r]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

export function toCsv(rows) {
  return rows.map((row) => row.map(csvCell).join(",")).join("\r\n") + "\r\n";
}

/** A DocumentReference as one line: title or description, date, content type, pages when known. */
export function documentWords(document) {
  const attachment = (document.content || [])[0]?.attachment || {};
  const title = attachment.title || document.description || document.type?.text || `DocumentReference/${document.id}`;
  const pages = attachment.pages ?? extension(attachment, EXT_PAGES)?.valueInteger;
  const parts = [title, when(document.date) || "no date", attachment.contentType || "unknown type"];
  if (Number.isInteger(pages)) parts.push(`${pages} ${pages === 1 ? "page" : "pages"}`);
  return parts.join(" — ");
}

/** The URL of a DocumentReference's first faxable attachment (z3://, or this server's Z3 URL), or null. */
export function faxableUrl(document, origin, projectApiPath) {
  const types = ["application/pdf", "image/tiff", "image/png", "image/jpeg"];
  const z3 = `${origin}${projectApiPath}/z3/`;
  for (const { attachment } of document.content || []) {
    const url = attachment?.url || "";
    if (attachment?.contentType && !types.includes(attachment.contentType)) continue;
    if (url.startsWith("z3://") || url.startsWith(z3)) return url; // $send-fax takes both forms
  }
  return null;
}
