// The outbox: every sent fax (all patients) the user may see, filtered by status, date range and sender number,
// stopped faxes first, then newest first; each with a page preview, and a resend for a stopped one.
//
// The filters are the server's search parameters (status, sent=ge/le, sender); a sender number is first turned
// into the senders that have it as their fax number (telecom search), since a sent fax names its sender by
// reference. Faxes in flight are re-read by `refreshFlying()` (the clinic view's timer calls it).
import { PartyNames } from "./api.js";
import { filterProblem, outboxQueries } from "./clinic_words.js";
import { checkNumber, faxNumberOf, finished, pageCount, statusCode, statusWords, when } from "./words.js";

const $ = (id) => document.getElementById(id);
const SENDER_TYPES = ["HealthcareService", "Organization", "PractitionerRole", "Practitioner"];

export class Outbox {
  constructor(clinic) {
    this.clinic = clinic;
    this.api = clinic.api;
    this.faxes = []; // Communications in the order shown
    this.names = new PartyNames(clinic.api, (c) => [c.sender, c.subject, ...(c.recipient || [])]);
    this.loaded = false;
    this.preview = { id: null, page: 1, pages: null, url: null };
    $("outbox-filters").addEventListener("submit", (event) => {
      event.preventDefault();
      this.load();
    });
    $("outbox-clear").addEventListener("click", () => {
      $("outbox-filters").reset();
      this.load();
    });
    $("outbox-sender").addEventListener("input", () => {
      $("outbox-sender-error").textContent = "";
    });
    $("outbox-preview-prev").addEventListener("click", () => this.showPage(this.preview.page - 1));
    $("outbox-preview-next").addEventListener("click", () => this.showPage(this.preview.page + 1));
    $("outbox-preview-close").addEventListener("click", () => this.closePreview());
  }

  filters() {
    return { status: $("outbox-status").value, from: $("outbox-from").value, to: $("outbox-to").value };
  }

  /** The senders whose fax number is ``number`` (null: no such filter; [] none has it). */
  async senders(number) {
    const found = [];
    await Promise.all(
      SENDER_TYPES.map(async (type) => {
        try {
          const matches = await this.api.search(`${type}?telecom=${encodeURIComponent(number)}&_count=50`, 50);
          found.push(...matches.filter((r) => faxNumberOf(r) === number).map((r) => `${type}/${r.id}`));
        } catch {
          /* this token may not read that type: the others still count */
        }
      }),
    );
    return found;
  }

  async load() {
    for (const id of ["outbox-error", "outbox-sender-error"]) $(id).textContent = "";
    const filters = this.filters();
    const problem = filterProblem(filters);
    if (problem) {
      $("outbox-error").textContent = problem;
      return;
    }
    let senders = null;
    const typed = $("outbox-sender").value;
    if (typed.trim()) {
      const checked = checkNumber(typed);
      if (!checked.ok) {
        $("outbox-sender-error").textContent = checked.message;
        return;
      }
      senders = await this.senders(checked.value);
      if (!senders.length) {
        $("outbox-sender-error").textContent = `No sender has the fax number ${checked.value}, so no fax was sent from it.`;
        this.show([]);
        return;
      }
    }
    $("outbox-summary").textContent = "Reading…";
    try {
      const pages = await Promise.all(outboxQueries(filters, senders).map((query) => this.api.search(query)));
      const faxes = pages.flat();
      await this.names.learn(faxes);
      this.loaded = true;
      this.show(faxes);
    } catch (error) {
      $("outbox-summary").textContent = "";
      $("outbox-error").textContent = `The outbox could not be read: ${error.message}`;
    }
  }

  show(faxes) {
    this.faxes = faxes;
    const stopped = faxes.filter((c) => c.status === "stopped").length;
    $("outbox-summary").textContent = faxes.length
      ? `${faxes.length} sent ${faxes.length === 1 ? "fax" : "faxes"}${stopped ? `, ${stopped} stopped (shown first)` : ""}.`
      : "No sent fax matches.";
    $("outbox-table").querySelector("tbody").replaceChildren(...faxes.map((c) => this.row(c)));
  }

  row(c) {
    const tr = document.createElement("tr");
    tr.dataset.id = c.id;
    tr.dataset.status = statusCode(c);
    const status = document.createElement("span");
    status.className = `status status-${statusCode(c).toLowerCase()}`;
    status.textContent = statusWords(c);
    const cells = [when(c.sent), status, pageCount(c) ?? "", this.names.of(c, c.subject), this.names.of(c, c.sender),
      (c.recipient || []).map((r) => this.names.of(c, r)).join(", ")];
    for (const value of cells) {
      const td = document.createElement("td");
      td.append(value);
      tr.append(td);
    }
    const actions = document.createElement("td");
    const preview = document.createElement("button");
    preview.type = "button";
    preview.textContent = "Preview";
    preview.setAttribute("aria-label", `Preview the fax sent ${when(c.sent)}`);
    preview.addEventListener("click", () => this.openPreview(c.id));
    actions.append(preview);
    if (c.status === "stopped") actions.append(this.resendForm(c));
    tr.append(actions);
    return tr;
  }

  resendForm(c) {
    const form = document.createElement("form");
    form.className = "resend";
    const id = `outbox-resend-${c.id}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = "New fax number (empty: the same)";
    const input = document.createElement("input");
    input.type = "tel";
    input.id = id;
    const error = document.createElement("p");
    error.className = "error";
    error.setAttribute("role", "alert");
    const submit = document.createElement("button");
    submit.type = "submit";
    submit.textContent = "Resend";
    submit.setAttribute("aria-label", `Resend the fax sent ${when(c.sent)}`);
    form.append(label, input, submit, error);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      const number = input.value.replace(/[\s().-]/g, "");
      if (number && !checkNumber(number).ok) {
        error.textContent = checkNumber(number).message;
        return;
      }
      submit.disabled = true;
      try {
        const created = await this.api.operation(`Communication/${c.id}/$resend`,
          number ? [{ name: "recipientNumber", valueString: number }] : []);
        await this.names.learn([created]);
        this.replace(created, true);
        $("outbox-summary").textContent = `Resent. The new fax is ${statusWords(created).toLowerCase()}.`;
      } catch (failure) {
        error.textContent = `Not resent: ${failure.message}`;
        submit.disabled = false;
      }
    });
    return form;
  }

  /** Show a new version of a fax in place (or a new fax after the stopped ones, where the newest go). */
  replace(communication, added = false) {
    const body = $("outbox-table").querySelector("tbody");
    const index = this.faxes.findIndex((c) => c.id === communication.id);
    if (index >= 0) {
      const old = body.querySelector(`tr[data-id="${CSS.escape(communication.id)}"]`);
      if (old?.contains(document.activeElement)) return; // not under the user's hands; the next tick shows it
      this.faxes[index] = communication;
      old?.replaceWith(this.row(communication));
    } else if (added) {
      const at = this.faxes.filter((c) => c.status === "stopped").length;
      this.faxes.splice(at, 0, communication);
      body.insertBefore(this.row(communication), body.children[at] || null);
    }
  }

  /** Re-read the faxes shown that are still in flight (called by the clinic view's timer). */
  async refreshFlying() {
    const flying = this.faxes.filter((c) => !finished(c));
    await Promise.allSettled(
      flying.map(async (c) => {
        const now = await this.api.read(`Communication/${c.id}`);
        if (now.meta?.versionId !== c.meta?.versionId) this.replace(now);
      }),
    );
  }

  async openPreview(id) {
    this.preview = { id, page: 1, pages: null, url: null };
    $("outbox-preview").hidden = false;
    await this.showPage(1);
    $("outbox-preview-heading").focus();
  }

  async showPage(page) {
    const { id, pages } = this.preview;
    if (!id || page < 1 || (pages && page > pages)) return;
    try {
      const shown = await this.api.faxPage(id, page);
      shown.pages ??= pageCount(this.faxes.find((c) => c.id === id) || {});
      if (this.preview.url) URL.revokeObjectURL(this.preview.url);
      const url = URL.createObjectURL(shown.blob);
      this.preview = { id, page, pages: shown.pages, url };
      $("outbox-preview-image").src = url;
      $("outbox-preview-image").alt = `Page ${page} of the fax`;
      $("outbox-preview-page").textContent = `Page ${page} of ${shown.pages ?? "?"}`;
      $("outbox-preview-prev").disabled = page <= 1;
      $("outbox-preview-next").disabled = shown.pages !== null && page >= shown.pages;
    } catch (error) {
      $("outbox-preview-page").textContent = `The page could not be shown: ${error.message}`;
    }
  }

  closePreview() {
    if (this.preview.url) URL.revokeObjectURL(this.preview.url);
    this.preview = { id: null, page: 1, pages: null, url: null };
    $("outbox-preview").hidden = true;
    $("outbox-preview-image").removeAttribute("src");
  }
}
