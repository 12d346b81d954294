// Plain words and queries of the clinic view (inbox and outbox): no requests, no DOM, so the browser tests can run
// them as they are.

export const TASK_SYSTEM = "urn:fhir-fax:task";
export const TRIAGE = `${TASK_SYSTEM}|file-inbound-fax`;
export const NOT_PATIENT_RELATED = "not-patient-related";
const DIRECTION = "urn:fhir-fax:fax-direction";
const CONFIDENCE = "suggestion-confidence";
const EVIDENCE = "suggestion-evidence";

/** The triage queue: received faxes not filed yet, newest first, each with its Communication, and the count. */
export function inboxQuery(count = 50) {
  const code = encodeURIComponent(TRIAGE);
  return `Task?status=requested&code=${code}&_include=Task:focus&_sort=-authored-on&_count=${count}&_total=accurate`;
}

/** "1 unfiled fax", "3 unfiled faxes". */
export function unfiledWords(count) {
  return `${count} unfiled ${count === 1 ? "fax" : "faxes"}`;
}

function extensionValue(item, suffix, kind) {
  return (item.extension || []).find((e) => String(e.url).endsWith(suffix))?.[kind];
}

function inputsOf(task, code) {
  return (task.input || []).filter((i) => (i.type?.coding || []).some((c) => c.system === TASK_SYSTEM && c.code === code));
}

/** The patients a received fax's Task suggests, strongest first: {reference, name, confidence, evidence}. */
export function suggestedPatients(task) {
  return inputsOf(task, "suggested-patient")
    .map((input) => ({
      reference: input.valueReference?.reference || "",
      name: input.valueReference?.display || input.valueReference?.reference || "",
      confidence: Number(extensionValue(input, CONFIDENCE, "valueDecimal")) || 0,
      evidence: evidenceWords(extensionValue(input, EVIDENCE, "valueString") || ""),
    }))
    .filter((s) => s.reference.startsWith("Patient/"))
    .sort((a, b) => b.confidence - a.confidence);
}

/** Who the caller's number belongs to, when the server recognised it ("Harbor Cardiology"), else "". */
export function suggestedSender(task) {
  const [input] = inputsOf(task, "suggested-sender");
  return input?.valueReference?.display || "";
}

/** "Strong match (99%)": how sure the suggestion is, in words first. */
export function confidenceWords(confidence) {
  const word = confidence >= 0.8 ? "Strong match" : confidence >= 0.5 ? "Likely match" : "Possible match";
  return `${word} (${Math.round(confidence * 100)}%)`;
}

const EVIDENCE_ITEM = /page (\d+): (identifier|birth date|family name|given name) (['"])(.*?)\3(?=;|$)/g;
const KIND_WORDS = { identifier: "record number", "birth date": "birth date", "family name": "family name",
  "given name": "given name" };

/** The server's evidence ("page 1: identifier 'MRN-1'; page 1: birth date '04/17/1958'") in plain words:
 * "Found on page 1: record number MRN-1, birth date 04/17/1958." */
export function evidenceWords(text) {
  const pages = new Map();
  for (const [, page, kind, , value] of String(text).matchAll(EVIDENCE_ITEM)) {
    if (!pages.has(page)) pages.set(page, []);
    pages.get(page).push(`${KIND_WORDS[kind]} ${value}`);
  }
  if (!pages.size) return text ? `Found: ${text}` : "";
  return [...pages].map(([page, found]) => `Found on page ${page}: ${found.join(", ")}.`).join(" ");
}

/** The caller's number of a received fax (its contained sender Device), or "a hidden number". */
export function callerOf(communication) {
  const reference = communication.sender?.reference || "";
  const device = (communication.contained || []).find((r) => `#${r.id}` === reference);
  const number = (device?.identifier || []).find((i) => i.value)?.value;
  return number || "a hidden number";
}

/** The outbox's searches for the chosen filters, in the order their results are shown: stopped faxes first
 * (unless a status is chosen), each newest first. ``senders`` are the references whose fax number was asked for
 * (null: no sender filter). Sent faxes are fax Communications that are not received ones. */
export function outboxQueries({ status = "", from = "", to = "" } = {}, senders = null, count = 100) {
  const base = [`medium=FAXWRIT`, `category:not=${encodeURIComponent(`${DIRECTION}|inbound`)}`];
  if (from) base.push(`sent=ge${from}`);
  if (to) base.push(`sent=le${to}`);
  if (senders) base.push(`sender=${senders.map(encodeURIComponent).join(",")}`);
  base.push("_sort=-sent", `_count=${count}`);
  const statuses = status ? [`status=${status}`] : ["status=stopped", "status:not=stopped"];
  return statuses.map((s) => `Communication?${[s, ...base].join("&")}`);
}

/** Why the outbox's filters cannot be used, or "" (a date range that ends before it starts). */
export function filterProblem({ from = "", to = "" } = {}) {
  return from && to && to < from ? "The end date is before the start date." : "";
}
