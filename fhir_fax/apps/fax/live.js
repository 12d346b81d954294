// Live updates: an R4 websocket Subscription of the app's own, so a change on the server reaches the page at once.
//
// `watch(criteria, onPing)` creates the Subscription (channel websocket, an `end` a few hours ahead so a tab that
// dies leaves nothing matched for long), reads the websocket's URL from the CapabilityStatement, connects and sends
// `bind {id} {token}` (the token only ever travels in that message, never in a URL). Each `ping {id}` calls
// onPing(); so does each (re)bind, since nothing is told about what changed while unbound.
//
// The Subscription is renewed before its end: a fresh one is created and bound on a second socket, and only once
// that is bound is the old socket closed and the old Subscription deleted, so the page stays live throughout. Its
// `end` is counted on the server's clock (the Date header of the metadata read, then each created Subscription's
// meta.lastUpdated), so a client clock hours off neither makes Subscriptions that have already ended nor loops.
//
// When the socket cannot be opened, drops, or the server says `error {id} …` (before or after `bound`), `live` turns
// false and it reconnects with back-off (1 s, doubling, at most 30 s). Only when the server says the Subscription is
// gone, ended or not a websocket one is it deleted and a new one made; any other failure (a 503 while the server
// restarts, a socket that could not open) binds the same one again later. `close()` unbinds and deletes the
// Subscription; it starts the deletion at once (a keepalive request), so it can run from `pagehide`, and a
// Subscription whose creation was still under way is deleted once made, with no socket opened for it.
// A "change" event is dispatched whenever `live` changes.
const WEBSOCKET = "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket";
const LIFETIME_MS = 4 * 60 * 60 * 1000; // the Subscription's end: a working session, not forever
const RENEW_AHEAD_MS = 60000; // renew this long before the end (at most a quarter of the lifetime)
const FIRST_RETRY_MS = 1000;
const LAST_RETRY_MS = 30000;
// Test hook only: a browser test shortens the lifetime to see a renewal (a number of milliseconds in this tab's
// sessionStorage). Nothing in the app sets it.
const LIFETIME_KEY = "fax-app-live-lifetime-ms";
// The server's words for a Subscription that will never bind again: make a new one. Anything else may pass.
const GONE = /\b(ended|deleted|does not exist|not websocket|create a new one)\b/i;

/** A bind the server refused; `gone` when the Subscription itself will never bind again. */
class BindRefused extends Error {
  constructor(reason) {
    super(reason);
    this.gone = GONE.test(reason);
  }
}

function lifetime() {
  const asked = Number(sessionStorage.getItem(LIFETIME_KEY));
  return Number.isFinite(asked) && asked > 0 ? asked : LIFETIME_MS;
}

/** `work` run one call at a time, for re-reads after notifications: a call while it runs makes it run once more
 * afterwards (several such calls, once), and every caller's promise settles after that last run, so a change
 * that lands during a read is never missed. */
export function oneAtATime(work) {
  let running = null;
  let again = false;
  return () => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await work();
        } while (again);
      } finally {
        running = null;
      }
    })();
    return running;
  };
}

export class LiveFeed extends EventTarget {
  constructor(client, config) {
    super();
    this.client = client;
    this.config = config;
    this.base = client.state.serverUrl.replace(/\/$/, "");
    this.subscription = null; // the id of the Subscription bound (or to be bound), once made
    this.endsAt = null; // its end, in the server's milliseconds
    this.skewMs = 0; // the server's clock minus this one's
    this.socket = null; // the bound socket
    this.opening = new Set(); // sockets not bound yet
    this.bound = false;
    this.closed = true;
    this.retryMs = FIRST_RETRY_MS;
    this.retryTimer = null;
    this.renewTimer = null;
  }

  /** True while a socket is bound to the Subscription. */
  get live() {
    return this.bound;
  }

  serverNow() {
    return Date.now() + this.skewMs;
  }

  /** Watch `criteria` (e.g. `Communication?patient=Patient/1`); true when live now, false when retrying later. */
  async watch(criteria, onPing) {
    this.criteria = criteria;
    this.onPing = onPing;
    this.closed = false;
    return this.connect();
  }

  async connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.closed) return false;
    try {
      this.url ??= await this.socketUrl();
      if (!this.subscription) {
        const made = await this.subscribe();
        this.subscription = made.id;
        this.endsAt = made.endsAt;
      }
      await this.bind(this.subscription);
      this.retryMs = FIRST_RETRY_MS;
      this.renewLater();
      return true;
    } catch (error) {
      if (error instanceof BindRefused && error.gone) this.forget(this.subscription);
      this.dropped();
      return false;
    }
  }

  /** The websocket URL the server names in its CapabilityStatement (and the server's clock, from its Date). */
  async socketUrl() {
    const { body: statement, response } = await this.client.request({
      url: "metadata",
      headers: { "Cache-Control": "no-cache" },
      includeResponse: true,
    });
    const date = Date.parse(response?.headers?.get("Date") || "");
    if (Number.isFinite(date)) this.skewMs = date - Date.now();
    const rest = (statement.rest || []).find((r) => r.mode === "server") || (statement.rest || [])[0] || {};
    const url = (rest.extension || []).find((e) => e.url === WEBSOCKET)?.valueUri;
    if (!url) throw new Error("The server names no websocket for Subscriptions.");
    return url;
  }

  /** Create a Subscription: {id, endsAt}. When the feed was closed meanwhile, it is deleted at once instead. */
  async subscribe() {
    const lasts = lifetime();
    const created = await this.client.create({
      resourceType: "Subscription",
      status: "requested",
      reason: "Fax app: live status",
      criteria: this.criteria,
      end: new Date(this.serverNow() + lasts).toISOString(),
      channel: { type: "websocket" },
    });
    const stored = Date.parse(created.meta?.lastUpdated || "");
    if (Number.isFinite(stored)) this.skewMs = stored - Date.now(); // the server's clock, as it wrote this one
    if (this.closed) {
      this.deleteNow(created.id);
      throw new Error("Closed while the Subscription was being made.");
    }
    const end = Date.parse(created.end || "");
    return { id: created.id, endsAt: Number.isFinite(end) ? end : this.serverNow() + lasts };
  }

  /** Open a socket and bind it to Subscription `id`; resolves once bound (that socket is then the feed's, and the
   *  one bound before is closed), rejects when refused or closed first. */
  async bind(id) {
    await this.client.refreshIfNeeded();
    if (this.closed) throw new Error("Closed.");
    const token = this.client.state.tokenResponse?.access_token;
    await new Promise((resolve, reject) => {
      const socket = new WebSocket(this.url);
      this.opening.add(socket);
      socket.addEventListener("open", () => socket.send(`bind ${id} ${token}`));
      socket.addEventListener("message", (event) => {
        const text = String(event.data);
        const [word, about] = text.split(" ");
        if (about !== id) return;
        if (word === "bound") {
          this.opening.delete(socket);
          if (this.closed) {
            socket.close();
            reject(new Error("Closed."));
            return;
          }
          const previous = this.socket;
          this.socket = socket;
          this.subscription = id;
          previous?.close();
          this.setBound(true);
          resolve();
          this.onPing?.();
        } else if (word === "ping") {
          if (this.socket === socket) this.onPing?.();
        } else if (word === "error") {
          // Refused, or (once bound) ended or deleted: not live any more. The close that follows reconnects.
          const refused = new BindRefused(text.slice(`error ${id} `.length));
          if (refused.gone && this.socket === socket) this.forget(id);
          reject(refused);
          socket.close();
        }
      });
      socket.addEventListener("close", () => {
        this.opening.delete(socket);
        reject(new Error("The websocket closed."));
        if (this.socket !== socket) return;
        this.socket = null;
        this.dropped();
      });
    });
  }

  /** Renew a minute (at most a quarter of the lifetime) before the end, on the server's clock. */
  renewLater() {
    clearTimeout(this.renewTimer);
    this.renewTimer = null;
    if (this.closed || this.endsAt === null) return;
    const left = this.endsAt - this.serverNow();
    const delay = Math.max(0, left - Math.min(RENEW_AHEAD_MS, lifetime() / 4));
    this.renewTimer = setTimeout(() => this.renew(), delay);
  }

  /** A fresh Subscription, bound on its own socket before the old one is let go; on failure, try again with
   *  back-off while the old one lasts (once it ends the server closes its socket and `connect()` takes over). */
  async renew() {
    this.renewTimer = null;
    if (this.closed || !this.bound) return; // not live: reconnecting makes a new one if this one is gone
    const old = this.subscription;
    let made = null;
    try {
      made = await this.subscribe();
      await this.bind(made.id);
    } catch {
      if (made && this.subscription !== made.id) this.deleteNow(made.id);
      if (this.closed || this.subscription !== old) return;
      this.renewTimer = setTimeout(() => this.renew(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, LAST_RETRY_MS);
      return;
    }
    this.endsAt = made.endsAt;
    this.retryMs = FIRST_RETRY_MS;
    if (old && old !== made.id) this.deleteNow(old);
    this.renewLater();
  }

  /** The Subscription `id` will not bind again: delete it (if it is still there) and make a new one next time. */
  forget(id) {
    if (!id) return;
    if (this.subscription === id) {
      this.subscription = null;
      this.endsAt = null;
    }
    this.deleteNow(id);
  }

  /** Start deleting Subscription `id` now (a keepalive request, so it outlives a page being hidden). */
  deleteNow(id) {
    return fetch(`${this.base}/Subscription/${encodeURIComponent(id)}`, {
      method: "DELETE",
      keepalive: true,
      headers: { Authorization: this.client.getAuthorizationHeader() },
    }).catch(() => {});
  }

  setBound(bound) {
    if (this.bound === bound) return;
    this.bound = bound;
    this.dispatchEvent(new Event("change"));
  }

  /** Not live: say so, and try again later (each failure waits twice as long, up to 30 s). */
  dropped() {
    this.setBound(false);
    clearTimeout(this.renewTimer);
    this.renewTimer = null;
    if (this.closed || this.retryTimer !== null) return;
    this.retryTimer = setTimeout(() => this.connect(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, LAST_RETRY_MS);
  }

  /** Unbind and delete the Subscription (the request starts before the first await, for `pagehide`). */
  async close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.renewTimer);
    this.retryTimer = null;
    this.renewTimer = null;
    const id = this.subscription;
    this.subscription = null;
    this.endsAt = null;
    const deleted = id ? this.deleteNow(id) : Promise.resolve();
    const socket = this.socket;
    this.socket = null;
    socket?.close();
    for (const opening of this.opening) opening.close();
    this.opening.clear();
    this.setBound(false);
    await deleted;
  }
}
