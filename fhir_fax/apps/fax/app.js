// The fax app's start: the SMART launch (standalone or from an EHR), then the patient's log and the send form.
//
// Status refresh: live through a websocket Subscription on this patient's Communications (live.js): each
// notification re-reads the log (`changed()`). Only while that is not live (the socket cannot be opened, or it
// dropped and is reconnecting) does a timer call `refresh(id)` once a second for the faxes in flight.
import { Api } from "./api.js";
import { ClinicApp, chooseView, switchView } from "./clinic.js";
import { LiveFeed, oneAtATime } from "./live.js";
import { FaxLog } from "./log.js";
import { SendForm } from "./send.js";
import { finished, nameOf } from "./words.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;

class FaxApp {
  constructor(client, config) {
    this.client = client;
    this.api = new Api(client, config);
    this.patientId = client.patient.id;
    this.timer = null;
    this.log = new FaxLog(this);
    this.send = new SendForm(this);
    this.feed = new LiveFeed(client, config);
    // A notification: some fax of this patient changed (or was added). Re-read the log, one read at a time.
    this.changed = oneAtATime(async () => {
      await this.log.load();
      const current = this.send.current && this.log.faxes.get(this.send.current.id);
      if (current) this.send.updated(current);
    });
    this.feed.addEventListener("change", () => this.liveChanged());
    addEventListener("pagehide", () => this.feed.close());
    addEventListener("pageshow", (event) => event.persisted && this.goLive());
    $("nav-log").addEventListener("click", () => this.show("log"));
    $("nav-send").addEventListener("click", () => this.show("send"));
  }

  async start() {
    try {
      const patient = await this.api.read(`Patient/${this.patientId}`);
      const born = patient.birthDate ? `, born ${patient.birthDate}` : "";
      $("patient-banner").textContent = `Patient: ${nameOf(patient)}${born}`;
    } catch {
      $("patient-banner").textContent = `Patient/${this.patientId}`;
    }
    this.show("log", false);
    this.say("");
    await Promise.all([this.log.load(), this.send.loadSenders(), this.send.loadExisting()]);
    await this.goLive();
  }

  /** Subscribe to this patient's faxes; the poll runs only while that is not live. */
  async goLive() {
    $("live-status").textContent = "Connecting live updates…";
    await this.feed.watch(`Communication?patient=Patient/${this.patientId}`, () => this.changed());
    this.liveChanged();
  }

  liveChanged() {
    const live = this.feed.live;
    $("live-status").textContent = live
      ? "Live updates on"
      : "Live updates unavailable: faxes in progress are checked every second.";
    $("live-status").dataset.live = String(live);
    if (!live) this.watch();
  }

  say(text) {
    $("app-status").textContent = text;
  }

  show(view, focus = true) {
    for (const name of ["log", "send"]) {
      $(`${name}-view`).hidden = name !== view;
      if (name === view) $(`nav-${name}`).setAttribute("aria-current", "page");
      else $(`nav-${name}`).removeAttribute("aria-current");
    }
    if (focus) $(`${view}-heading`).focus();
  }

  /** Re-read one fax and show it everywhere (the hook a websocket notification will call). */
  async refresh(id) {
    const communication = await this.api.read(`Communication/${id}`);
    await this.log.update(communication);
    this.send.updated(communication);
    return communication;
  }

  /** Poll the faxes in flight until none is, or until live updates are on; stops by itself. */
  watch() {
    if (this.timer !== null || this.feed.live) return;
    const tick = async () => {
      if (this.feed.live) {
        this.timer = null;
        return;
      }
      const flying = this.log.inFlight();
      if (this.send.current && !finished(this.send.current) && !flying.includes(this.send.current.id)) {
        flying.push(this.send.current.id);
      }
      if (!flying.length) {
        this.timer = null;
        return;
      }
      await Promise.allSettled(flying.map((id) => this.refresh(id)));
      this.timer = setTimeout(tick, POLL_MS);
    };
    this.timer = setTimeout(tick, POLL_MS);
  }
}

async function main() {
  const config = await (await fetch("config.json")).json();
  const here = new URL(location.href);
  const appUrl = `${location.origin}${location.pathname}`;
  const options = { clientId: config.clientId, redirectUri: appUrl, scope: "", pkceMode: "required" };
  const standaloneScopes = config.scopes.filter((s) => s !== "launch");
  if (here.searchParams.has("launch") || here.searchParams.has("iss")) {
    // An EHR launch (or a launch with a given server): always a fresh authorization, never an old session.
    await FHIR.oauth2.authorize({ ...options, scope: config.scopes.filter((s) => s !== "launch/patient").join(" ") });
    return;
  }
  const iss = `${location.origin}${config.fhirPath}`;
  // Standalone: the start page asks "a patient's faxes" or "clinic inbox and outbox" (each its own scopes).
  const view = await chooseView(here);
  const scopes = view === "clinic" ? config.clinicScopes : standaloneScopes;
  $("switch-view").hidden = false; // also a way out when the authorization fails
  $("switch-view").addEventListener("click", () => switchView(appUrl));
  const client = await FHIR.oauth2.init({ ...options, iss, scope: scopes.join(" ") });
  if (!client.patient.id) {
    if (view === "clinic") {
      await new ClinicApp(client, config).start();
      return;
    }
    $("app-status").textContent = "This sign-in has no patient: launch the app with a patient.";
    return;
  }
  await new FaxApp(client, config).start();
}

main().catch((error) => {
  $("app-status").textContent = `The app could not start: ${error.message || error}`;
});
