// The clinic view: signed in without a patient, with user scopes, for the inbox (received faxes to file) and the
// outbox (every sent fax). Also the start page that asks which view, before any authorization.
//
// Keeping the inbox current: `inbox.reload()` is the one function that does it. A websocket Subscription on every
// fax (live.js) calls it at each notification (see `watch()`); only while that is not live does a timer call it
// every few seconds. The same tick re-reads the outbox's faxes that are in flight.
import { Api } from "./api.js";
import { Inbox } from "./inbox.js";
import { LiveFeed, oneAtATime } from "./live.js";
import { Outbox } from "./outbox.js";
import { unfiledWords } from "./clinic_words.js";
import { nameOf } from "./words.js";

const $ = (id) => document.getElementById(id);
const VIEW_KEY = "fax-app-view"; // the chosen view, kept beside the SMART client's session in sessionStorage
const RELOAD_MS = 3000;
const VIEWS = ["inbox", "outbox"];
const FAX_MEDIUM = "FAXWRIT"; // every fax, sent or received, carries this medium

/** The view this tab works in: the one chosen before (kept in sessionStorage), none when returning from an
 * authorization (an EHR launch has its own), else the start page's answer. */
export async function chooseView(here) {
  const kept = sessionStorage.getItem(VIEW_KEY);
  if (kept) return kept;
  if (here.searchParams.has("code") || here.searchParams.has("error") || sessionStorage.getItem("SMART_KEY")) {
    return "patient";
  }
  $("app-status").textContent = "";
  $("start-view").hidden = false;
  $("start-heading").focus();
  const view = await new Promise((resolve) => {
    $("start-patient").addEventListener("click", () => resolve("patient"), { once: true });
    $("start-clinic").addEventListener("click", () => resolve("clinic"), { once: true });
  });
  sessionStorage.setItem(VIEW_KEY, view);
  $("start-view").hidden = true;
  $("app-status").textContent = "Signing in…";
  return view;
}

/** Back to the start page: this tab's session (token and chosen view) is forgotten. */
export function switchView(appUrl) {
  sessionStorage.clear();
  location.assign(appUrl);
}

export class ClinicApp {
  constructor(client, config) {
    this.client = client;
    this.config = config;
    this.api = new Api(client, config);
    this.timer = null;
    this.changed = oneAtATime(() => this.tick()); // a notification: a fax changed or arrived
    this.inbox = new Inbox(this);
    this.outbox = new Outbox(this);
    for (const name of ["log", "send"]) $(`nav-${name}`).hidden = true;
    for (const name of VIEWS) {
      $(`nav-${name}`).hidden = false;
      $(`nav-${name}`).addEventListener("click", () => this.show(name));
    }
  }

  async start() {
    $("patient-banner").textContent = "Clinic view: received and sent faxes of every patient you may see";
    this.greet();
    this.show("inbox", false);
    $("app-status").textContent = "";
    await this.inbox.reload();
    this.watch();
  }

  async greet() {
    const who = this.client.user?.fhirUser;
    if (!who) return;
    try {
      const person = await this.api.read(who);
      $("patient-banner").textContent = `Clinic view — ${nameOf(person)}`;
    } catch {
      /* the banner keeps its general words */
    }
  }

  show(view, focus = true) {
    for (const name of VIEWS) {
      $(`${name}-view`).hidden = name !== view;
      if (name === view) $(`nav-${name}`).setAttribute("aria-current", "page");
      else $(`nav-${name}`).removeAttribute("aria-current");
    }
    if (view === "outbox" && !this.outbox.loaded) this.outbox.load();
    if (focus) $(`${view}-heading`).focus();
  }

  /** The unfiled count in the header (null: unknown, e.g. the inbox may not be read). */
  count(total) {
    $("unfiled-count").textContent = total === null ? "(not available)" : `(${unfiledWords(total)})`;
    $("nav-inbox").dataset.count = total === null ? "" : String(total);
  }

  /** Keep the inbox (and the outbox's faxes in flight) current: live through a websocket Subscription on every
   *  fax (received ones are Communications too: a new one, or one filed elsewhere, is a notification). Only
   *  while that is not live does a timer re-read every few seconds. */
  async watch() {
    this.feed = new LiveFeed(this.client, this.config);
    this.feed.addEventListener("change", () => this.liveChanged());
    addEventListener("pagehide", () => this.feed.close());
    await this.feed.watch(`Communication?medium=${FAX_MEDIUM}`, () => this.changed());
    this.liveChanged();
  }

  liveChanged() {
    const live = this.feed.live;
    $("live-status").textContent = live
      ? "Live updates on"
      : "Live updates unavailable: the inbox is checked every few seconds.";
    $("live-status").dataset.live = String(live);
    if (live && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    } else if (!live && this.timer === null) {
      this.timer = setInterval(() => this.tick(), RELOAD_MS);
    }
  }

  async tick() {
    await this.inbox.reload();
    if (!$("outbox-view").hidden) await this.outbox.refreshFlying();
  }
}
