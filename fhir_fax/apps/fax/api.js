// Requests to the server with the SMART client's token: FHIR reads through the client itself, operations and
// uploads through fetch/XMLHttpRequest with the client's Authorization header (the token is never put in a URL).

import { faxNumberOf, nameOf } from "./words.js";

/** A refusal from the server, in plain words, with the form fields it names (from OperationOutcome.expression). */
export class ServerError extends Error {
  constructor(message, fields = [], status = 0) {
    super(message);
    this.fields = fields;
    this.status = status;
  }
}

const FIELDS = ["media", "sender", "recipientNumber", "recipient", "quality", "coverPage", "coverNote", "patient", "page"];

/** The field a diagnostics or expression text names ("media[2]: ..." names media). */
function fieldOf(text) {
  const head = String(text || "").split(/[\s:.[]/)[0];
  return FIELDS.find((field) => head === field) || null;
}

export async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON */
  }
  return errorOf(body, response.status);
}

/** The SMART client has read the body of a refused request already; its message ends with that body. */
function errorOfClient(error) {
  if (error.response && !error.response.bodyUsed) return errorFrom(error.response);
  const text = String(error.message || error);
  const at = text.indexOf("\n\n{");
  let body = null;
  try {
    body = at >= 0 ? JSON.parse(text.slice(at + 2)) : null;
  } catch {
    /* keep the text */
  }
  return body ? errorOf(body, error.status || 0) : new ServerError(text.split("\n")[0], [], error.status || 0);
}

function errorOf(body, status) {
  if (body?.resourceType === "OperationOutcome") {
    const issues = body.issue || [];
    const message = issues.map((i) => i.diagnostics || i.details?.text || i.code).join(" ") || `Error ${status}.`;
    const fields = new Set();
    for (const issue of issues) {
      for (const expression of issue.expression || []) {
        const field = fieldOf(expression);
        if (field) fields.add(field);
      }
      const named = fieldOf(issue.diagnostics);
      if (named) fields.add(named);
    }
    return new ServerError(message, [...fields], status);
  }
  const message = body?.message || body?.error_description || `The server answered ${status}.`;
  return new ServerError(message, fieldOf(message) ? [fieldOf(message)] : [], status);
}

export class Api {
  constructor(client, config) {
    this.client = client;
    this.config = config;
    this.fhirBase = client.state.serverUrl.replace(/\/$/, "");
    this.origin = new URL(this.fhirBase).origin;
  }

  /** The Authorization header, after the SMART client has refreshed an expiring token (online_access). */
  async headers(extra = {}) {
    await this.client.refreshIfNeeded();
    return { Authorization: this.client.getAuthorizationHeader(), ...extra };
  }

  /** GET a FHIR URL relative to the base (the SMART client refreshes the token when it can). */
  async read(path) {
    try {
      return await this.client.request({ url: path, headers: { "Cache-Control": "no-cache" } });
    } catch (error) {
      throw await errorOfClient(error);
    }
  }

  /** Every page of a search, following Bundle next links on the same server. */
  async search(path, limit = 500) {
    const found = [];
    let bundle = await this.read(path);
    while (bundle) {
      found.push(...(bundle.entry || []).map((e) => e.resource));
      const next = (bundle.link || []).find((l) => l.relation === "next")?.url;
      if (!next || found.length >= limit || !next.startsWith(this.fhirBase)) break;
      bundle = await this.read(next);
    }
    return found;
  }

  async operation(path, parameters) {
    const response = await fetch(`${this.fhirBase}/${path}`, {
      method: "POST",
      headers: await this.headers({ "Content-Type": "application/fhir+json", Accept: "application/fhir+json" }),
      body: JSON.stringify({ resourceType: "Parameters", parameter: parameters }),
    });
    if (!response.ok) throw await errorFrom(response);
    return response.json();
  }

  /** A page of a sent fax as an image blob (GET {fax API}/faxes/{id}/preview?page=N). */
  async faxPage(id, page) {
    const url = `${this.origin}${this.config.faxApiPath}/faxes/${encodeURIComponent(id)}/preview?page=${page}`;
    const response = await fetch(url, { headers: await this.headers() });
    if (!response.ok) throw await errorFrom(response);
    return { blob: await response.blob(), pages: Number(response.headers.get("Fax-Pages")) || null };
  }

  /** Upload one file through Z3: ask for a signed upload URL, then PUT the bytes, reporting progress (0..1). */
  async upload(file, key, onProgress) {
    const { bucket, projectApiPath } = this.config;
    const path = key.split("/").map(encodeURIComponent).join("/");
    const response = await fetch(`${this.origin}${projectApiPath}/z3/${bucket}/${path}`, {
      method: "POST",
      headers: await this.headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ action: "upload" }),
    });
    if (!response.ok) throw await errorFrom(response);
    const { signedUrl } = await response.json();
    await new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      request.open("PUT", signedUrl);
      request.setRequestHeader("Content-Type", file.type || "application/octet-stream");
      request.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) onProgress(event.loaded / event.total);
      });
      request.addEventListener("load", () => {
        if (request.status >= 200 && request.status < 300) {
          onProgress(1);
          resolve();
        } else {
          let message = `The upload was refused (${request.status}).`;
          try {
            message = JSON.parse(request.responseText).message || message;
          } catch {
            /* keep the status */
          }
          reject(new ServerError(message, ["media"], request.status));
        }
      });
      request.addEventListener("error", () => reject(new ServerError("The upload failed: the connection broke.", ["media"])));
      request.send(file);
    });
    return `z3://${bucket}/${key}`;
  }
}


/** The names of the parties of faxes, each reference read once: "Name (fax number)" (a patient without the
 * number); a contained party (a number typed in) by its own name or number; a reference this token may not read
 * as the reference itself. `parties(c)` says which references of a Communication to name. */
export class PartyNames {
  constructor(api, parties) {
    this.api = api;
    this.parties = parties;
    this.names = new Map(); // reference (or "<fax id>#<contained id>") -> name
  }

  async learn(communications) {
    const wanted = new Set();
    for (const c of communications) {
      for (const ref of this.parties(c)) {
        const reference = ref?.reference;
        if (!reference) continue;
        if (reference.startsWith("#")) {
          const contained = (c.contained || []).find((r) => `#${r.id}` === reference);
          this.names.set(`${c.id}${reference}`, nameOf(contained) || faxNumberOf(contained));
        } else if (!this.names.has(reference)) {
          wanted.add(reference);
        }
      }
    }
    await Promise.all(
      [...wanted].map(async (reference) => {
        try {
          const resource = await this.api.read(reference);
          const number = reference.startsWith("Patient/") ? "" : faxNumberOf(resource);
          this.names.set(reference, number ? `${nameOf(resource)} (${number})` : nameOf(resource));
        } catch {
          this.names.set(reference, reference); // not readable with this token: show the reference itself
        }
      }),
    );
  }

  of(communication, ref) {
    const reference = ref?.reference || "";
    return this.names.get(reference.startsWith("#") ? `${communication.id}${reference}` : reference) || reference;
  }
}
