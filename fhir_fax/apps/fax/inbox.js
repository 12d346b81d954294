// The inbox: received faxes awaiting triage (their Tasks), each with its pages, the patients the server suggests
// and why, "File to <patient>" ($file), a patient search to file elsewhere, and "Not patient-related".
//
// `reload()` is the one way the inbox is brought up to date (a Subscription's ping, or the fallback timer): it keeps
// the elements of faxes that did not change, so focus and half-typed searches survive it.
import { errorFrom } from "./api.js";
import {
  NOT_PATIENT_RELATED,
  TASK_SYSTEM,
  callerOf,
  confidenceWords,
  inboxQuery,
  suggestedPatients,
  suggestedSender,
} from "./clinic_words.js";
import { oneAtATime } from "./live.js";
import { nameOf, pageCount, when } from "./words.js";

const $ = (id) => document.getElementById(id);
const SUGGESTING_MS = 120000; // how long after a fax arrives its suggestions may still be on their way
const RECHECK_MS = 3000;

function make(tag, properties = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(properties)) {
    if (key === "class") element.className = value;
    else if (key.startsWith("aria-") || key.startsWith("data-") || key === "role" || key === "for") {
      element.setAttribute(key, value);
    } else element[key] = value;
  }
  element.append(...children);
  return element;
}

function born(patient) {
  const parts = [];
  if (patient?.birthDate) parts.push(`born ${patient.birthDate}`);
  const mrn = (patient?.identifier || []).find((i) => i.value)?.value;
  if (mrn) parts.push(`record number ${mrn}`);
  return parts.join(", ");
}

export class Inbox {
  constructor(clinic) {
    this.clinic = clinic;
    this.api = clinic.api;
    this.items = new Map(); // Task id -> {task, communication, element, preview: {page, pages, url}}
    this.patients = new Map(); // "Patient/id" -> Patient (or null: not readable)
    // The one way the inbox is brought up to date; a reload asked for while a read runs reads once more after it.
    this.reload = oneAtATime(() => this.read());
    this.total = null;
    this.gone = new Set(); // Tasks filed or dismissed here: a read begun before that must not bring them back
    this.suggestionTimer = null;
    $("refresh-inbox").addEventListener("click", () => this.reload());
  }

  async read() {
    let bundle;
    try {
      bundle = await this.api.read(inboxQuery());
    } catch (error) {
      this.refused(error);
      return;
    }
    $("inbox-error").textContent = "";
    const entries = bundle.entry || [];
    const communications = new Map(
      entries.filter((e) => e.resource.resourceType === "Communication").map((e) => [e.resource.id, e.resource]),
    );
    const all = entries.filter((e) => e.resource.resourceType === "Task").map((e) => e.resource);
    const tasks = all.filter((t) => !this.gone.has(t.id));
    this.total = (Number.isInteger(bundle.total) ? bundle.total : all.length) - (all.length - tasks.length);
    this.clinic.count(this.total);
    $("inbox-more").textContent =
      this.total > tasks.length ? `Showing the ${tasks.length} newest of ${this.total}; file these to see the rest.` : "";
    await this.readPatients(tasks);
    this.render(tasks, communications);
    this.awaitSuggestions(tasks);
  }

  /** The server adds its suggestions to a new fax's Task after the fax is stored (reading the pages can take
   * seconds), and a Task change is not a Communication change, so no notification says they came: while a Task
   * younger than SUGGESTING_MS has none, read the queue again in a few seconds. */
  awaitSuggestions(tasks) {
    const now = Date.now();
    const young = (t) => now - Date.parse(t.authoredOn || t.meta?.lastUpdated || 0) < SUGGESTING_MS;
    if (this.suggestionTimer || !tasks.some((t) => !(t.input || []).length && young(t))) return;
    this.suggestionTimer = setTimeout(() => {
      this.suggestionTimer = null;
      this.reload();
    }, RECHECK_MS);
  }

  refused(error) {
    const denied = error.status === 401 || error.status === 403;
    $("inbox-error").textContent =
      error.status === 403
        ? `You may not see the inbox of received faxes: ${error.message} Ask an administrator for access to ` +
          "received faxes (Task and Communication)."
        : error.status === 401
          ? `Your sign-in is no longer valid (${error.message}): choose "Change view" to sign in again.`
          : `The inbox could not be read: ${error.message}`;
    this.clinic.count(null);
    if (denied) {
      for (const id of [...this.items.keys()]) this.drop(id);
      $("inbox-empty").hidden = true;
    }
  }

  async readPatients(tasks) {
    const wanted = new Set();
    for (const task of tasks) {
      for (const s of suggestedPatients(task)) if (!this.patients.has(s.reference)) wanted.add(s.reference);
    }
    await Promise.all(
      [...wanted].map(async (reference) => {
        try {
          this.patients.set(reference, await this.api.read(reference));
        } catch {
          this.patients.set(reference, null);
        }
      }),
    );
  }

  render(tasks, communications) {
    const list = $("inbox-list");
    const wanted = new Set(tasks.map((t) => t.id));
    for (const id of [...this.items.keys()]) if (!wanted.has(id)) this.drop(id);
    let anchor = list.firstElementChild;
    for (const task of tasks) {
      const communication = communications.get(task.focus?.reference?.split("/")[1]);
      if (!communication) continue; // a fax this token may not read
      let item = this.items.get(task.id);
      const changed = item && item.task.meta?.versionId !== task.meta?.versionId;
      if (changed && !item.element.contains(document.activeElement)) {
        const old = item.element;
        this.forget(item);
        item = this.build(task, communication);
        old.replaceWith(item.element);
        if (anchor === old) anchor = item.element;
      } else if (changed) {
        this.refresh(item, task, communication);
      } else if (!item) {
        item = this.build(task, communication);
      }
      if (item.element === anchor) anchor = anchor.nextElementSibling;
      else list.insertBefore(item.element, anchor);
    }
    $("inbox-empty").hidden = this.items.size > 0;
  }

  /** The Task changed while focus is inside its item: the element (and what is typed in it) stays, but its
   * actions must use the newest version (an If-Match of the old one is a needless 412), and new suggestions are
   * shown unless focus is on one of the old ones. */
  refresh(item, task, communication) {
    item.task = task;
    item.communication = communication;
    const old = item.suggestionBox;
    if (old && !old.contains(document.activeElement)) {
      const box = this.suggestions(item, item.error);
      old.replaceWith(box);
    }
  }

  forget(item) {
    if (item.preview.url) URL.revokeObjectURL(item.preview.url);
    this.items.delete(item.task.id);
  }

  drop(id) {
    const item = this.items.get(id);
    if (!item) return;
    this.forget(item);
    item.element.remove();
  }

  build(task, communication) {
    const id = task.id;
    const caller = callerOf(communication);
    const pages = pageCount(communication);
    const sender = suggestedSender(task);
    const item = { task, communication, caller, element: null, preview: { page: 1, pages, url: null } };
    const heading = make("h3", { id: `fax-${id}-title`, tabIndex: -1 },
      `Fax from ${caller}${pages ? ` (${pages} page${pages === 1 ? "" : "s"})` : ""}`);
    const meta = make("p", { class: "meta" }, `Received ${when(communication.received || communication.sent)}.`,
      sender ? ` The number is ${sender}'s.` : "");
    if ((communication.note || [])[0]?.text) meta.append(` ${communication.note[0].text}`);
    const error = make("p", { id: `fax-${id}-error`, class: "error", role: "alert" });
    item.error = error;
    const triage = make("div", { class: "triage" },
      this.suggestions(item, error), this.search(item, error), this.notPatientRelated(item, error), error);
    const article = make("article", { "aria-labelledby": heading.id }, heading, meta,
      make("div", { class: "item-columns" }, this.pager(item), triage));
    item.element = make("li", { class: "fax-item", "data-task": id, "data-communication": communication.id }, article);
    this.items.set(id, item);
    this.showPage(item, 1);
    return item;
  }

  pager(item) {
    const id = item.task.id;
    const image = make("img", { id: `fax-${id}-page`, alt: "" });
    const label = make("span", { id: `fax-${id}-page-label`, "aria-live": "polite" });
    const previous = make("button", { type: "button", "aria-label": `Previous page of the fax from ${item.caller}` },
      "Previous page");
    const next = make("button", { type: "button", "aria-label": `Next page of the fax from ${item.caller}` },
      "Next page");
    previous.addEventListener("click", () => this.showPage(item, item.preview.page - 1));
    next.addEventListener("click", () => this.showPage(item, item.preview.page + 1));
    item.pagerParts = { image, label, previous, next };
    return make("figure", { class: "page-preview" }, image, make("figcaption", { class: "pager" }, previous, label, next));
  }

  async showPage(item, page) {
    const { pages } = item.preview;
    const { image, label, previous, next } = item.pagerParts;
    if (page < 1 || (pages && page > pages)) return;
    try {
      const shown = await this.api.faxPage(item.communication.id, page);
      if (item.preview.url) URL.revokeObjectURL(item.preview.url);
      item.preview = { page, pages: pages ?? shown.pages, url: URL.createObjectURL(shown.blob) };
      if (!this.items.has(item.task.id)) return URL.revokeObjectURL(item.preview.url); // filed meanwhile
      image.src = item.preview.url;
      image.alt = `Page ${page} of the fax from ${item.caller}`;
      label.textContent = `Page ${page} of ${item.preview.pages ?? "?"}`;
      previous.disabled = page <= 1;
      next.disabled = item.preview.pages !== null && page >= item.preview.pages;
    } catch (error) {
      label.textContent = `The page could not be shown: ${error.message}`;
    }
  }

  suggestions(item, error) {
    const found = suggestedPatients(item.task);
    const box = make("section", { class: "suggested", "aria-label": "Suggested patients" },
      make("h4", {}, "Suggested patients"));
    if (!found.length) {
      box.append(make("p", {}, "No patient was recognised in this fax: search for the patient below."));
      item.suggestionBox = box;
      return box;
    }
    const list = make("ul", { class: "suggestions" });
    for (const suggestion of found) {
      const patient = this.patients.get(suggestion.reference);
      const name = patient ? nameOf(patient) : suggestion.name;
      const details = born(patient);
      const button = make("button", { type: "button", class: "primary", "aria-describedby": `fax-${item.task.id}-title` },
        `File to ${name}`);
      button.addEventListener("click", () => this.file(item, suggestion.reference, name, error));
      list.append(make("li", { "data-patient": suggestion.reference },
        make("p", {}, make("strong", {}, name), details ? `, ${details}` : "", ` — ${confidenceWords(suggestion.confidence)}`),
        make("p", { class: "evidence" }, suggestion.evidence), button));
    }
    box.append(list);
    item.suggestionBox = box;
    return box;
  }

  search(item, error) {
    const id = item.task.id;
    const field = (name, label, type) => {
      const input = make("input", { id: `fax-${id}-${name}`, type, name, autocomplete: "off" });
      return [make("label", { for: input.id }, label), input];
    };
    const results = make("ul", { class: "patient-results", "aria-label": "Patients found" });
    const said = make("p", { class: "hint", "aria-live": "polite" });
    const submit = make("button", { type: "submit" }, "Search patients");
    const form = make("form", { class: "patient-search", noValidate: true },
      make("fieldset", {}, make("legend", {}, "File to another patient"),
        make("div", { class: "search-fields" },
          make("div", {}, ...field("name", "Name", "search")),
          make("div", {}, ...field("birthdate", "Birth date", "date")),
          make("div", {}, ...field("identifier", "Record number (MRN)", "search"))),
        submit, said, results));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      said.textContent = "";
      results.replaceChildren();
      const query = new URLSearchParams();
      for (const name of ["name", "birthdate", "identifier"]) {
        const value = form.elements[name].value.trim();
        if (value) query.set(name, value);
      }
      if (![...query.keys()].length) {
        said.textContent = "Give a name, a birth date or a record number to search.";
        return;
      }
      query.set("_count", "20");
      try {
        const found = await this.api.search(`Patient?${query}`, 20);
        said.textContent = found.length ? `${found.length} found.` : "No patient matches.";
        for (const patient of found) {
          const name = nameOf(patient);
          const details = born(patient);
          const button = make("button", { type: "button", "aria-describedby": `fax-${id}-title` }, `File to ${name}`);
          button.addEventListener("click", () => this.file(item, `Patient/${patient.id}`, name, error));
          results.append(make("li", { "data-patient": `Patient/${patient.id}` },
            make("span", {}, name, details ? `, ${details}` : ""), button));
        }
      } catch (failure) {
        said.textContent = `The patients could not be searched: ${failure.message}`;
      }
    });
    return form;
  }

  notPatientRelated(item, error) {
    const button = make("button", { type: "button", class: "secondary" }, "Not patient-related");
    button.setAttribute("aria-label", `The fax from ${item.caller} is not patient-related`);
    button.addEventListener("click", () => this.dismiss(item, error));
    return make("div", { class: "dismiss" }, button);
  }

  busy(item, on) {
    for (const button of item.element.querySelectorAll(".triage button")) button.disabled = on;
  }

  /** File the fax to a patient with the server's $file: DocumentReference, Communication.subject, Task done. */
  async file(item, reference, name, error) {
    error.textContent = "";
    this.busy(item, true);
    try {
      await this.api.operation(`Communication/${item.communication.id}/$file`, [
        { name: "patient", valueReference: { reference } },
      ]);
      await this.done(item, `The fax from ${item.caller} is filed to ${name}.`);
    } catch (failure) {
      error.textContent = `Not filed: ${failure.message}`;
      if (failure.status === 409) await this.afterRace(item, `Not filed: ${failure.message}`);
      else this.busy(item, false);
    }
  }

  /** Close the triage Task without a patient: completed, its business status "not patient-related". */
  async dismiss(item, error) {
    error.textContent = "";
    this.busy(item, true);
    const task = item.task;
    const changed = {
      ...task,
      status: "completed",
      businessStatus: {
        coding: [{ system: TASK_SYSTEM, code: NOT_PATIENT_RELATED, display: "Not patient-related" }],
        text: "Not patient-related",
      },
      lastModified: new Date().toISOString(),
    };
    delete changed.meta;
    try {
      const headers = { "Content-Type": "application/fhir+json", Accept: "application/fhir+json" };
      if (task.meta?.versionId) headers["If-Match"] = `W/"${task.meta.versionId}"`;
      const response = await fetch(`${this.api.fhirBase}/Task/${encodeURIComponent(task.id)}`, {
        method: "PUT",
        headers: await this.api.headers(headers),
        body: JSON.stringify(changed),
      });
      if (!response.ok) throw await errorFrom(response);
      await this.done(item, `The fax from ${item.caller} is marked not patient-related.`);
    } catch (failure) {
      if (failure.status === 409 || failure.status === 412) {
        await this.afterRace(item, "Not changed: this fax changed since it was shown. It is shown as it is now: " +
          "check it and choose again.");
      } else {
        error.textContent = `Not changed: ${failure.message}`;
        this.busy(item, false);
      }
    }
  }

  /** Someone else changed the fax meanwhile: read the queue again first (the buttons stay off until then, so a
   * second click cannot repeat the stale request), then say what became of it in plain words. */
  async afterRace(item, words) {
    const id = item.task.id;
    await this.reload();
    const now = this.items.get(id);
    if (now) {
      now.error.textContent = words;
      this.busy(now, false);
    } else {
      $("inbox-done").textContent =
        `The fax from ${item.caller} was already filed or closed by someone else; it has left the inbox.`;
      $("inbox-empty").hidden = this.items.size > 0;
    }
  }

  /** A fax left the queue: say so, move focus to the next fax (or the heading), and count again. */
  async done(item, words) {
    const next = item.element.nextElementSibling || item.element.previousElementSibling;
    this.gone.add(item.task.id);
    this.drop(item.task.id);
    $("inbox-done").textContent = words;
    (next?.querySelector("h3") || $("inbox-heading")).focus();
    if (this.total !== null) this.clinic.count(Math.max(0, this.total - 1));
    $("inbox-empty").hidden = this.items.size > 0;
    await this.reload();
  }
}
