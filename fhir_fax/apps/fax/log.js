// The patient's fax log: newest first, in plain words, with page previews, resend and CSV export.
import { PartyNames } from "./api.js";
import { finished, pageCount, statusCode, statusWords, toCsv, when } from "./words.js";

const $ = (id) => document.getElementById(id);

export class FaxLog {
  constructor(app) {
    this.app = app;
    this.faxes = new Map(); // id -> Communication (the newest version seen)
    this.names = new PartyNames(app.api, (c) => [c.sender, ...(c.recipient || [])]);
    this.preview = { id: null, page: 1, pages: null, url: null };
    $("refresh-log").addEventListener("click", () => this.load());
    $("export-csv").addEventListener("click", () => this.exportCsv());
    $("fax-preview-prev").addEventListener("click", () => this.showPage(this.preview.page - 1));
    $("fax-preview-next").addEventListener("click", () => this.showPage(this.preview.page + 1));
    $("fax-preview-close").addEventListener("click", () => this.closePreview());
  }

  async load() {
    $("log-error").textContent = "";
    try {
      const patient = encodeURIComponent(this.app.patientId);
      const found = await this.app.api.search(`Communication?patient=${patient}&_count=100`);
      this.faxes = new Map(found.map((c) => [c.id, c]));
      await this.names.learn(found);
      this.render();
    } catch (error) {
      $("log-error").textContent = `The fax log could not be read: ${error.message}`;
    }
  }

  /** A new version of one fax (from the timer now; from a Subscription's websocket later). */
  async update(communication) {
    this.faxes.set(communication.id, communication);
    await this.names.learn([communication]);
    this.render();
  }

  inFlight() {
    return [...this.faxes.values()].filter((c) => !finished(c)).map((c) => c.id);
  }

  sorted() {
    const key = (c) => c.sent || c.meta?.lastUpdated || "";
    return [...this.faxes.values()].sort((a, b) => key(b).localeCompare(key(a)));
  }

  resends(id) {
    return this.sorted().filter((c) => (c.partOf || []).some((p) => p.reference === `Communication/${id}`));
  }

  row(c) {
    const from = this.names.of(c, c.sender);
    const to = (c.recipient || []).map((r) => this.names.of(c, r)).join(", ");
    const original = (c.partOf || [])[0]?.reference?.split("/")[1];
    const notes = [];
    if (original) notes.push(`Resend of the fax sent ${when(this.faxes.get(original)?.sent) || original}`);
    for (const resend of this.resends(c.id)) notes.push(`Resent ${when(resend.sent)}: ${statusWords(resend)}`);
    return { c, from, to, notes, status: statusWords(c), pages: pageCount(c) };
  }

  render() {
    const body = $("log-table").querySelector("tbody");
    body.replaceChildren();
    const rows = this.sorted().map((c) => this.row(c));
    $("log-empty").hidden = rows.length > 0;
    for (const { c, from, to, notes, status, pages } of rows) {
      const tr = document.createElement("tr");
      tr.dataset.id = c.id;
      tr.dataset.status = statusCode(c);
      const cells = [when(c.sent), null, pages ?? "", from, to, when(c.meta?.lastUpdated)];
      cells.forEach((value, index) => {
        const td = document.createElement("td");
        if (index === 1) {
          const strong = document.createElement("span");
          strong.className = `status status-${statusCode(c).toLowerCase()}`;
          strong.textContent = status;
          td.append(strong);
          for (const note of notes) {
            const small = document.createElement("div");
            small.className = "note";
            small.textContent = note;
            td.append(small);
          }
        } else {
          td.textContent = value;
        }
        tr.append(td);
      });
      const actions = document.createElement("td");
      actions.append(this.button("Preview", `Preview the fax sent ${when(c.sent)}`, () => this.openPreview(c.id)));
      if (c.status === "stopped") actions.append(this.resendForm(c));
      tr.append(actions);
      body.append(tr);
    }
  }

  button(text, label, onClick) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = text;
    button.setAttribute("aria-label", label);
    button.addEventListener("click", onClick);
    return button;
  }

  resendForm(c) {
    const form = document.createElement("form");
    form.className = "resend";
    const id = `resend-number-${c.id}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = "New fax number (empty: the same)";
    const input = document.createElement("input");
    input.type = "tel";
    input.id = id;
    input.name = "recipientNumber";
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
      const parameters = number ? [{ name: "recipientNumber", valueString: number }] : [];
      submit.disabled = true;
      try {
        const created = await this.app.api.operation(`Communication/${c.id}/$resend`, parameters);
        await this.update(created);
        this.app.watch();
        this.app.say(`Resent. The new fax is ${statusWords(created).toLowerCase()}.`);
      } catch (failure) {
        error.textContent = failure.message;
        submit.disabled = false;
      }
    });
    return form;
  }

  async openPreview(id) {
    this.preview = { id, page: 1, pages: null, url: null };
    $("fax-preview").hidden = false;
    await this.showPage(1);
    $("fax-preview-heading").focus?.();
  }

  async showPage(page) {
    const { id, pages } = this.preview;
    if (!id || page < 1 || (pages && page > pages)) return;
    try {
      const shown = await this.app.api.faxPage(id, page);
      shown.pages ??= pageCount(this.faxes.get(id) || {}); // the fax's own count, cover included
      if (this.preview.url) URL.revokeObjectURL(this.preview.url);
      const url = URL.createObjectURL(shown.blob);
      this.preview = { id, page, pages: shown.pages, url };
      $("fax-preview-image").src = url;
      $("fax-preview-image").alt = `Page ${page} of the fax`;
      $("fax-preview-page").textContent = `Page ${page} of ${shown.pages ?? "?"}`;
      $("fax-preview-prev").disabled = page <= 1;
      $("fax-preview-next").disabled = shown.pages !== null && page >= shown.pages;
    } catch (error) {
      if (page > 1 && pages === null && error.status >= 400 && error.status < 500) {
        // The count was unknown (a single document before the carrier reported it): this was past the end.
        this.preview.pages = page - 1;
        $("fax-preview-page").textContent = `Page ${page - 1} of ${page - 1}`;
        $("fax-preview-next").disabled = true;
        return;
      }
      $("fax-preview-page").textContent = `The page could not be shown: ${error.message}`;
    }
  }

  closePreview() {
    if (this.preview.url) URL.revokeObjectURL(this.preview.url);
    this.preview = { id: null, page: 1, pages: null, url: null };
    $("fax-preview").hidden = true;
    $("fax-preview-image").removeAttribute("src");
  }

  exportCsv() {
    const header = ["id", "sent", "status", "reason", "pages", "from", "to", "last change", "resend of"];
    const rows = this.sorted().map((c) => {
      const { from, to, pages } = this.row(c);
      const reason = c.status === "stopped" ? c.statusReason?.text || "" : "";
      const original = (c.partOf || [])[0]?.reference || "";
      return [c.id, c.sent || "", statusCode(c), reason, pages ?? "", from, to, c.meta?.lastUpdated || "", original];
    });
    const blob = new Blob([toCsv([header, ...rows])], { type: "text/csv;charset=utf-8" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `faxes-${this.app.patientId}.csv`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }
}
