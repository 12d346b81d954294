// Sending a fax: documents (picked or dropped, uploaded with progress, or the patient's DocumentReferences on file),
// sender, recipient (number checked as E.164 while it is typed, or a directory entry), quality, cover sheet and
// note, the dry-run preview, then the steps.
import { checkNumber, documentWords, faxableUrl, faxNumberOf, nameOf, STEPS, statusCode, statusWords } from "./words.js";

const $ = (id) => document.getElementById(id);
// Which element shows the errors about each parameter of $send-fax.
const ERROR_FOR = {
  media: "documents-error",
  sender: "sender-error",
  recipient: "recipient-error",
  recipientNumber: "recipient-error",
  quality: "quality-error",
  coverPage: "cover-page-error",
  coverNote: "cover-note-error",
};
// Searched by name; PractitionerRoles (which have no name) are found through the Practitioners found.
const DIRECTORY = ["Practitioner", "Organization", "HealthcareService"];

export class SendForm {
  constructor(app) {
    this.app = app;
    this.documents = []; // {file, key, url (z3://) once uploaded, promise, progress element}
    this.existing = []; // {reference, url, box}: the patient's DocumentReferences that can be faxed, in list order
    this.recipient = null; // {reference, label} chosen from the directory
    this.dryRun = { page: 1, pages: null };
    this.current = null; // the Communication being followed
    const input = $("documents");
    input.addEventListener("change", () => {
      this.add([...input.files]);
      input.value = "";
    });
    const zone = $("drop-zone");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      this.add([...event.dataTransfer.files]);
    });
    $("recipient-number").addEventListener("input", () => this.checkNumber());
    // An error about a field goes away once the field is changed.
    const clears = { "recipient-number": "recipient-error", sender: "sender-error", quality: "quality-error",
      "cover-page": "cover-page-error", "cover-note": "cover-note-error" };
    for (const [field, error] of Object.entries(clears)) {
      $(field).addEventListener(field === "cover-note" || field === "recipient-number" ? "input" : "change", () => {
        $(error).textContent = "";
      });
    }
    $("directory-search").addEventListener("click", () => this.searchDirectory());
    $("directory-query").addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        this.searchDirectory();
      }
    });
    $("recipient-clear").addEventListener("click", () => this.choose(null));
    $("preview-button").addEventListener("click", () => this.preview(1));
    $("dry-run-prev").addEventListener("click", () => this.preview(this.dryRun.page - 1));
    $("dry-run-next").addEventListener("click", () => this.preview(this.dryRun.page + 1));
    $("send-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
  }

  async loadSenders() {
    const select = $("sender");
    select.replaceChildren();
    const found = [];
    for (const type of ["HealthcareService", "Organization"]) {
      try {
        found.push(...(await this.app.api.search(`${type}?_count=50`, 50)).filter((r) => faxNumberOf(r)));
      } catch {
        /* this token may not read that type: offer the others */
      }
    }
    for (const resource of found) {
      const option = document.createElement("option");
      option.value = `${resource.resourceType}/${resource.id}`;
      option.textContent = `${nameOf(resource)} (${faxNumberOf(resource)})`;
      select.append(option);
    }
    if (!found.length) $("sender-error").textContent = "No sender with a fax number is readable with this sign-in.";
  }

  /** The patient's DocumentReferences, newest first, each with a checkbox (disabled when it cannot be faxed). */
  async loadExisting() {
    const list = $("existing-list");
    list.replaceChildren();
    this.existing = [];
    let found = [];
    try {
      const patient = encodeURIComponent(`Patient/${this.app.patientId}`);
      found = await this.app.api.search(`DocumentReference?patient=${patient}&_sort=-date&_count=50`, 50);
    } catch (error) {
      $("existing-empty").textContent = `The documents on file could not be read: ${error.message}`;
      return;
    }
    $("existing-empty").textContent = found.length ? "" : "No documents on file for this patient.";
    for (const [index, on] of found.filter((d) => d.status !== "entered-in-error").entries()) {
      const url = faxableUrl(on, this.app.api.origin, this.app.api.config.projectApiPath);
      const item = document.createElement("li");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.id = `existing-${index}`;
      box.value = `DocumentReference/${on.id}`;
      box.disabled = !url;
      box.addEventListener("change", () => {
        $("documents-error").textContent = "";
      });
      const label = document.createElement("label");
      label.htmlFor = box.id;
      label.textContent = documentWords(on) + (url ? "" : " (not stored here: it cannot be faxed)");
      item.append(box, label);
      list.append(item);
      if (url) this.existing.push({ reference: box.value, url, box });
    }
  }

  /** The chosen DocumentReferences' document URLs, in the order shown. */
  chosenExisting() {
    return this.existing.filter((d) => d.box.checked).map((d) => d.url);
  }

  add(files) {
    for (const file of files) {
      const item = document.createElement("li");
      const progress = document.createElement("progress");
      progress.max = 1;
      progress.value = 0;
      const id = `upload-${this.documents.length}`;
      progress.id = id;
      const label = document.createElement("label");
      label.htmlFor = id;
      label.textContent = `${file.name} (${Math.ceil(file.size / 1024)} KB)`;
      const state = document.createElement("span");
      state.className = "upload-state";
      state.textContent = "uploading";
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${file.name}`);
      item.append(label, progress, state, remove);
      $("document-list").append(item);
      const key = `${this.app.patientId}/${crypto.randomUUID()}/${file.name.replace(/[^\w.-]+/g, "_")}`;
      const entry = { file, key, url: null, item };
      entry.promise = this.app.api
        .upload(file, key, (fraction) => {
          progress.value = fraction;
        })
        .then((url) => {
          entry.url = url;
          state.textContent = "uploaded";
          return url;
        })
        .catch((error) => {
          state.textContent = "failed";
          $("documents-error").textContent = `${file.name}: ${error.message}`;
          throw error;
        });
      entry.promise.catch(() => {});
      remove.addEventListener("click", () => {
        this.documents = this.documents.filter((d) => d !== entry);
        item.remove();
        $("documents").focus();
      });
      this.documents.push(entry);
    }
    $("documents-error").textContent = "";
  }

  checkNumber() {
    const checked = checkNumber($("recipient-number").value);
    const hint = $("recipient-number-hint");
    hint.textContent = checked.message;
    hint.className = checked.ok || !checked.message ? "hint" : "hint error";
    $("recipient-number").setAttribute("aria-invalid", String(!checked.ok && Boolean(checked.message)));
    if (checked.ok && this.recipient) this.choose(null);
    return checked;
  }

  async searchDirectory() {
    const text = $("directory-query").value.trim();
    const list = $("directory-results");
    list.replaceChildren();
    $("recipient-error").textContent = "";
    if (!text) {
      $("recipient-error").textContent = "Type part of a name to search the directory.";
      return;
    }
    const results = await Promise.allSettled(
      DIRECTORY.map((type) => this.app.api.search(`${type}?name=${encodeURIComponent(text)}&_count=20`, 20)),
    );
    const failures = results.filter((r) => r.status === "rejected").map((r) => r.reason);
    const practitioners = results[0].status === "fulfilled" ? results[0].value : [];
    const names = new Map(practitioners.map((p) => [`Practitioner/${p.id}`, nameOf(p)]));
    if (practitioners.length) {
      try {
        const who = [...names.keys()].map(encodeURIComponent).join(",");
        const roles = await this.app.api.search(`PractitionerRole?practitioner=${who}&_count=20`, 20);
        for (const role of roles) role.name = `${names.get(role.practitioner?.reference) || "Practitioner"} (role)`;
        results.push({ status: "fulfilled", value: roles });
      } catch {
        /* roles are a convenience: the practitioners found are shown anyway */
      }
    }
    const found = results.flatMap((r) => (r.status === "fulfilled" ? r.value : [])).filter((r) => faxNumberOf(r));
    if (failures.length === results.length) {
      $("recipient-error").textContent = `The directory could not be searched: ${failures[0].message}`;
      return;
    }
    if (!found.length) {
      const item = document.createElement("li");
      item.textContent = `No one named “${text}” with a fax number.`;
      list.append(item);
    }
    for (const resource of found) {
      const item = document.createElement("li");
      const label = `${nameOf(resource)} — ${resource.resourceType} — ${faxNumberOf(resource)}`;
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Choose";
      button.setAttribute("aria-label", `Choose ${label}`);
      button.addEventListener("click", () => this.choose({ reference: `${resource.resourceType}/${resource.id}`, label }));
      item.append(`${label} `, button);
      list.append(item);
    }
  }

  choose(recipient) {
    this.recipient = recipient;
    $("recipient-chosen").textContent = recipient ? `Recipient: ${recipient.label}` : "";
    $("recipient-clear").hidden = !recipient;
    if (recipient) {
      $("recipient-number").value = "";
      $("recipient-number-hint").textContent = "";
      $("directory-results").replaceChildren();
      $("recipient-clear").focus();
    }
  }

  clearErrors() {
    for (const id of [...new Set(Object.values(ERROR_FOR)), "send-error"]) $(id).textContent = "";
  }

  showError(error) {
    const targets = (error.fields || []).map((field) => ERROR_FOR[field]).filter(Boolean);
    for (const id of targets.length ? [...new Set(targets)] : ["send-error"]) $(id).textContent = error.message;
  }

  /** The $send-fax parameters of the form as it is, after every upload has finished; null when incomplete. */
  async parameters() {
    this.clearErrors();
    let problem = false;
    if (!this.documents.length && !this.chosenExisting().length) {
      $("documents-error").textContent = "Add at least one document to fax, or tick one on file.";
      problem = true;
    }
    const checked = checkNumber($("recipient-number").value);
    if (!this.recipient && !checked.ok) {
      $("recipient-error").textContent = checked.message || "Type a fax number or choose someone from the directory.";
      problem = true;
    }
    if (!$("sender").value) {
      $("sender-error").textContent = "Choose who the fax is from.";
      problem = true;
    }
    if (problem) return null;
    let media;
    try {
      media = await Promise.all(this.documents.map((d) => d.promise));
    } catch {
      return null; // the failed upload says why next to the documents
    }
    media.push(...this.chosenExisting()); // uploaded files first, then the ticked documents on file, as shown
    const parameters = [
      ...media.map((url) => ({ name: "media", valueUrl: url })),
      { name: "quality", valueCode: $("quality").value },
      { name: "sender", valueReference: { reference: $("sender").value } },
      { name: "patient", valueReference: { reference: `Patient/${this.app.patientId}` } },
      { name: "coverPage", valueBoolean: $("cover-page").checked },
    ];
    if (this.recipient) parameters.push({ name: "recipient", valueReference: { reference: this.recipient.reference } });
    else parameters.push({ name: "recipientNumber", valueString: checked.value });
    const note = $("cover-note").value.trim();
    if (note && $("cover-page").checked) parameters.push({ name: "coverNote", valueString: note });
    else if (note) {
      $("cover-note-error").textContent = "A note is printed on the cover sheet: tick “Add a cover sheet” too.";
      return null;
    }
    return parameters;
  }

  async preview(page) {
    if (page < 1 || (this.dryRun.pages && page > this.dryRun.pages)) return;
    const parameters = await this.parameters();
    if (!parameters) return;
    $("preview-button").disabled = true;
    try {
      const answer = await this.app.api.operation("Communication/$preview-fax", [
        ...parameters,
        { name: "page", valuePositiveInt: page },
      ]);
      const pages = answer.parameter.find((p) => p.name === "pages").valueInteger;
      const image = answer.parameter.find((p) => p.name === "image").valueAttachment;
      this.dryRun = { page, pages };
      $("dry-run").hidden = false;
      $("dry-run-pages").textContent = `${pages} ${pages === 1 ? "page" : "pages"} will be sent.`;
      $("dry-run-page").textContent = `Page ${page} of ${pages}`;
      $("dry-run-image").src = `data:${image.contentType};base64,${image.data}`;
      $("dry-run-image").alt = `Page ${page} of ${pages} as it will be sent`;
      $("dry-run-prev").disabled = page <= 1;
      $("dry-run-next").disabled = page >= pages;
    } catch (error) {
      this.showError(error);
    } finally {
      $("preview-button").disabled = false;
    }
  }

  async send() {
    const parameters = await this.parameters();
    if (!parameters) return;
    $("send-button").disabled = true;
    try {
      const created = await this.app.api.operation("Communication/$send-fax", parameters);
      this.follow(created);
      $("progress").scrollIntoView({ block: "nearest" });
      await this.app.log.update(created);
      this.app.watch();
    } catch (error) {
      this.showError(error);
    } finally {
      $("send-button").disabled = false;
    }
  }

  /** Show where ``communication`` is on queued -> processing -> sending -> delivered (or stopped, and why). */
  follow(communication) {
    this.current = communication;
    $("progress").hidden = false;
    const code = statusCode(communication);
    const reached = code === "STOPPED" ? -1 : STEPS.indexOf(code);
    for (const [index, item] of [...$("steps").children].entries()) {
      item.className = index < reached ? "done" : index === reached ? "current" : "";
      if (index === reached) item.setAttribute("aria-current", "step");
      else item.removeAttribute("aria-current");
    }
    $("steps").dataset.status = code;
    $("progress-status").textContent = statusWords(communication);
  }

  /** A new version of some fax: moves the steps when it is the one being followed. */
  updated(communication) {
    if (this.current && communication.id === this.current.id) this.follow(communication);
  }
}
