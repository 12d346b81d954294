// Live updates: an R4 websocket Subscription of the app's own, so a change on the server reaches the page at once.
//
// `watch(criteria, onPing)` creates the Subscription (channel websocket, an `end` a few hours ahead so a tab that
// dies leaves nothing that outlives the working session), reads the websocket's URL from the CapabilityStatement,
// connects and sends `bind {id} {token}` (the token only ever travels in that message, never in a URL). Each
// `ping {id}` calls onPing(); so does each (re)bind, since nothing is told about what changed while unbound.
// When the socket cannot be opened or drops, `live` turns false and it reconnects with back-off (1 s, doubling,
// at most 30 s). `close()` unbinds and deletes the Subscription; it starts the deletion at once (a keepalive
// request), so it can run from `pagehide`. A "change" event is dispatched whenever `live` changes.
const WEBSOCKET = "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket";
const LIFETIME_MS = 4 * 60 * 60 * 1000; // the Subscription's end: a working session, not forever
const FIRST_RETRY_MS = 1000;
const LAST_RETRY_MS = 30000;

export class LiveFeed extends EventTarget {
  constructor(client, config) {
    super();
    this.client = client;
    this.config = config;
    this.base = client.state.serverUrl.replace(/\/$/, "");
    this.subscription = null; // its id on the server, once made
    this.socket = null;
    this.bound = false;
    this.closed = true;
    this.retryMs = FIRST_RETRY_MS;
    this.retryTimer = null;
  }

  /** True while a socket is bound to the Subscription. */
  get live() {
    return this.bound;
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
      this.subscription ??= await this.subscribe();
      await this.bind();
      this.retryMs = FIRST_RETRY_MS;
      return true;
    } catch {
      this.dropped();
      return false;
    }
  }

  /** The websocket URL the server names in its CapabilityStatement. */
  async socketUrl() {
    const statement = await this.client.request({ url: "metadata", headers: { "Cache-Control": "no-cache" } });
    const rest = (statement.rest || []).find((r) => r.mode === "server") || (statement.rest || [])[0] || {};
    const url = (rest.extension || []).find((e) => e.url === WEBSOCKET)?.valueUri;
    if (!url) throw new Error("The server names no websocket for Subscriptions.");
    return url;
  }

  async subscribe() {
    const created = await this.client.create({
      resourceType: "Subscription",
      status: "requested",
      reason: "Fax app: live status",
      criteria: this.criteria,
      end: new Date(Date.now() + LIFETIME_MS).toISOString(),
      channel: { type: "websocket" },
    });
    return created.id;
  }

  /** Open the socket and bind it; resolves once bound, rejects when refused or closed first. */
  async bind() {
    await this.client.refreshIfNeeded();
    const token = this.client.state.tokenResponse?.access_token;
    const id = this.subscription;
    await new Promise((resolve, reject) => {
      const socket = new WebSocket(this.url);
      this.socket = socket;
      socket.addEventListener("open", () => socket.send(`bind ${id} ${token}`));
      socket.addEventListener("message", (event) => {
        const [word, about] = String(event.data).split(" ");
        if (word === "bound" && about === id) {
          this.setBound(true);
          resolve();
          this.onPing?.();
        } else if (word === "ping" && about === id) {
          this.onPing?.();
        } else if (word === "error") {
          // Gone, ended or refused: remove it (if it is still there) and let the next attempt make a new one.
          this.subscription = null;
          this.client.delete(`Subscription/${id}`).catch(() => {});
          reject(new Error(String(event.data)));
          socket.close();
        }
      });
      socket.addEventListener("close", () => {
        if (this.socket !== socket) return;
        this.socket = null;
        reject(new Error("The websocket closed."));
        if (this.bound) this.dropped();
      });
    });
  }

  setBound(bound) {
    if (this.bound === bound) return;
    this.bound = bound;
    this.dispatchEvent(new Event("change"));
  }

  /** Not live: say so, and try again later (each failure waits twice as long, up to 30 s). */
  dropped() {
    this.setBound(false);
    if (this.closed || this.retryTimer !== null) return;
    this.retryTimer = setTimeout(() => this.connect(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, LAST_RETRY_MS);
  }

  /** Unbind and delete the Subscription (the request starts before the first await, for `pagehide`). */
  async close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const id = this.subscription;
    this.subscription = null;
    let deleted = Promise.resolve();
    if (id) {
      deleted = fetch(`${this.base}/Subscription/${encodeURIComponent(id)}`, {
        method: "DELETE",
        keepalive: true,
        headers: { Authorization: this.client.getAuthorizationHeader() },
      }).catch(() => {});
    }
    const socket = this.socket;
    this.socket = null;
    socket?.close();
    this.setBound(false);
    await deleted;
  }
}
