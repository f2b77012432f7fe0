// The herald demo page (served by `herald dev` at /demo), built on the
// @herald/client SDK: its browser bundle is embedded in the binary and
// served at /demo/herald.js (a copy of clients/js/dist/herald.browser.js).
//
// Roles, by URL parameter:
//   /demo                                   role picker, the three panes side by side
//   /demo?role=visitor&site=1[&conversation=site1-<id>]   a website's chat widget
//   /demo?role=operator&op=1|2              an operator's dashboard
//
// What comes from herald: every message, in order and once (the SDK), the
// typing indicators (signals), who is in a conversation (presence).
// What comes from the STAND-IN BACKEND built into herald dev (a real app
// serves these itself): tokens (POST /demo/token), history of automatic
// subscriptions after a reload (GET /demo/api/history), the bot bot:ai and
// the dashboard summaries on dashboard_website_<site>.
//
// Message data is rendered as text only (textContent), never as markup.

import { Herald } from "/demo/herald.js";

const params = new URLSearchParams(location.search);
const HISTORY_PAGE = 1000;
/// Messages kept per conversation in localStorage (a reload shows them at
/// once and subscribes with `since` = the last one's seq).
const KEEP = 300;
/// How long a "typing" indicator shows without a new signal.
const TYPING_SHOW_MS = 5000;
/// How often "typing" is signalled while the user types, at most.
const TYPING_EVERY_MS = 1500;
/// Idle time after which "stopped typing" is signalled.
const TYPING_IDLE_MS = 3000;

// ---------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : String(c)); // text nodes: never markup
  }
  return e;
}

function fromTemplate(id) {
  return document.getElementById(id).content.cloneNode(true);
}

function randomHex(n) {
  const b = new Uint8Array(Math.ceil(n / 2));
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("").slice(0, n);
}

function clock(ts) {
  return new Date(ts || Date.now()).toLocaleTimeString();
}

const store = {
  get(key, fallback) {
    try {
      const v = localStorage.getItem(key);
      return v ? JSON.parse(v) : fallback;
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch {
      // Storage full or off: the page still works; a reload replays more.
    }
  },
  del(key) {
    try {
      localStorage.removeItem(key);
    } catch {
      /* nothing to do */
    }
  },
};

function fatal(message) {
  const app = document.getElementById("app");
  app.textContent = "";
  app.append(el("div", { class: "fatal", "data-testid": "fatal" }, message));
}

/** The stand-in token endpoint (a real app mints after its own login). */
async function requestToken(body) {
  const r = await fetch("/demo/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((j.error && j.error.message) || `POST /demo/token answered ${r.status}`);
  return j;
}

function wsUrl() {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
}

/** A message as kept in storage. */
function slim(m) {
  return { channel: m.channel, seq: m.seq, id: m.id, ts: m.ts, from: m.from, data: m.data };
}

function textOf(data) {
  if (data && typeof data.content === "string") return data.content;
  return JSON.stringify(data);
}

// ------------------------------------------------------------- connection

/**
 * One Herald client and its header widget (state, "Drop connection", log).
 * Tokens come from the stand-in endpoint through the SDK's getToken.
 */
class Connection {
  constructor(tokenRequest, first, slot) {
    this.tokenRequest = tokenRequest;
    this.token = first.token;
    this.conn = null;
    this.socket = null;
    this.onConnected = new Set();
    const ui = fromTemplate("conn-tpl");
    this.stateEl = ui.querySelector(".state");
    this.logEl = ui.querySelector(".log");
    ui.querySelector(".drop").addEventListener("click", () => this.drop());
    slot.append(ui);

    const self = this;
    // The SDK opens its sockets with this class, so "Drop connection" can
    // close the live one; the SDK sees a close it did not ask for.
    class DemoSocket extends WebSocket {
      constructor(url, protocols) {
        super(url, protocols);
        self.socket = this;
      }
    }
    let firstToken = first.token;
    this.h = new Herald(wsUrl(), {
      getToken: async () => {
        if (firstToken) {
          const t = firstToken;
          firstToken = null;
          return t;
        }
        const a = await requestToken(this.tokenRequest);
        this.token = a.token;
        return a.token;
      },
      websocket: DemoSocket,
      // The app's own history API (here the stand-in): what the page reads
      // after recovered:false.
      history: (channel, { after, limit }) => this.historyPage(channel, after, limit),
    });
    this.h.on("state", (s) => this.showState(s));
    this.h.on("connected", (w) => {
      this.conn = w.conn;
      this.node = w.node;
      this.showState("connected");
      this.log(`connected as ${w.conn} on ${w.node}`);
      for (const f of this.onConnected) f(w);
    });
    this.h.on("disconnected", (e) => {
      this.log(`disconnected ${e.code}${e.reason ? " " + e.reason : ""}${e.reconnect ? ", reconnecting" : ""}`, "warn");
    });
    this.h.on("error", (err) => this.log(`error: ${err && err.message ? err.message : err}`, "err"));
  }

  showState(s) {
    this.stateEl.dataset.state = s;
    this.stateEl.textContent = s === "connected" && this.node ? `connected · ${this.node}` : s;
  }

  log(text, kind) {
    this.logEl.prepend(el("li", { class: kind || "" }, `${clock()}  ${text}`));
    while (this.logEl.children.length > 100) this.logEl.lastChild.remove();
  }

  /** Closes the socket under the SDK (code 3000): it reconnects and recovers. */
  drop() {
    const s = this.socket;
    if (s && s.readyState <= 1) {
      this.log("connection dropped by the page", "warn");
      s.close(3000, "dropped by the demo page");
    }
  }

  /** One page of the stand-in history API (the SDK's `history` option). */
  async historyPage(channel, after, limit) {
    for (let retried = false; ; retried = true) {
      const q = new URLSearchParams({ channel, after: String(after), limit: String(limit) });
      const r = await fetch(`/demo/api/history?${q}`, { headers: { Authorization: `Bearer ${this.token}` } });
      if (r.status === 401 && !retried) {
        this.token = (await requestToken(this.tokenRequest)).token; // expired: a fresh one, once
        continue;
      }
      if (!r.ok) throw new Error(`history of ${channel} answered ${r.status}`);
      return r.json(); // {messages, last_seq}
    }
  }

  /** Every message of `channel` after `after`, through the SDK's `history()`. */
  async history(channel, after) {
    const out = [];
    for (let from = after; ; ) {
      const page = await this.h.history(channel, { after: from, limit: HISTORY_PAGE });
      out.push(...page);
      if (page.length < HISTORY_PAGE) return out;
      from = page[page.length - 1].seq;
    }
  }
}

// -------------------------------------------------------------- chat view

/**
 * One conversation channel on screen: messages (kept in localStorage with
 * their last seq, so a reload subscribes with `since`), typing indicators
 * both ways, presence. Used by the visitor's widget and the operator's
 * conversation pane.
 */
class ChatView {
  constructor(o) {
    this.o = o; // {conn, channel, me, root, storeKey, outgoing(text) -> data, describe(m) -> {who, mine}, nameOf(sub, info), onSeen?(m), onPresence?(), onHandoff?(m)}
    this.h = o.conn.h;
    this.listEl = o.root.querySelector('[data-testid="messages"]');
    this.typingEl = o.root.querySelector('[data-testid="typing"]');
    this.input = o.root.querySelector('[data-testid="composer-input"]');
    this.form = o.root.querySelector('[data-testid="composer"]');
    this.present = new Map(); // conn -> client
    this.sub = null;
    this.lastSeq = 0;
    this.kept = [];
    this.anomalies = 0;
    this.typingSentAt = 0;
    this.idleTimer = null;
    this.peerTimer = null;
    this.refreshPresence = () => this.loadPresence();
    this.onSubmit = (e) => {
      e.preventDefault();
      this.send();
    };
    this.onInput = () => this.typing();
  }

  open() {
    this.listEl.textContent = "";
    this.listEl.dataset.anomalies = "0";
    this.anomalies = 0;
    this.present.clear();
    const cached = store.get(this.o.storeKey, null);
    this.kept = cached && Array.isArray(cached.messages) ? cached.messages : [];
    this.lastSeq = cached && typeof cached.lastSeq === "number" ? cached.lastSeq : 0;
    for (const m of this.kept) this.render(m);
    this.form.addEventListener("submit", this.onSubmit);
    this.input.addEventListener("input", this.onInput);
    this.o.conn.onConnected.add(this.refreshPresence);
    this.subscribe(this.lastSeq);
  }

  close() {
    this.stopTyping();
    this.form.removeEventListener("submit", this.onSubmit);
    this.input.removeEventListener("input", this.onInput);
    this.o.conn.onConnected.delete(this.refreshPresence);
    if (this.sub) this.sub.unsubscribe();
    this.sub = null;
    clearTimeout(this.peerTimer);
    this.typingEl.textContent = "";
  }

  subscribe(since) {
    const sub = this.h.subscribe(this.o.channel, { since });
    this.sub = sub;
    sub.on("message", (m) => sub === this.sub && this.onMessage(m));
    sub.on("signal", (s) => sub === this.sub && this.onSignal(s));
    sub.on("presence", (e) => sub === this.sub && this.onPresenceEvent(e));
    sub.on("recovered", (r) => {
      if (sub !== this.sub) return;
      this.o.conn.log(`${this.o.channel}: ${r.recovered ? `recovered, ${r.replayed} replayed` : "history gap: reloading"}`,
        r.recovered ? "" : "err");
      if (!r.recovered) {
        this.jumpOk = true; // the stream goes on after the server's seq
        this.reload();
      }
    });
    sub.ready.then(
      (r) => {
        if (sub !== this.sub) return;
        if (r && typeof r.seq === "number" && r.seq < since) {
          // The store was reset (a new herald-dev.db): what is kept is stale.
          this.o.conn.log(`${this.o.channel} restarted at seq ${r.seq}: clearing the kept messages`, "warn");
          this.reset();
          return;
        }
        this.loadPresence();
      },
      (err) => this.o.conn.log(`subscribe ${this.o.channel}: ${err.code || ""} ${err.message}`, "err"),
    );
  }

  reset() {
    if (this.sub) this.sub.unsubscribe();
    this.sub = null;
    store.del(this.o.storeKey);
    this.kept = [];
    this.lastSeq = 0;
    this.listEl.textContent = "";
    this.subscribe(0);
  }

  /** After recovered:false: the whole channel again, from the app's API. */
  async reload() {
    try {
      const all = await this.o.conn.history(this.o.channel, 0);
      const known = new Set(this.kept.map((m) => m.seq));
      for (const m of all) if (!known.has(m.seq)) this.kept.push(slim(m));
      this.kept.sort((a, b) => a.seq - b.seq);
      this.kept = this.kept.slice(-KEEP);
      this.lastSeq = Math.max(this.lastSeq, ...this.kept.map((m) => m.seq));
      this.save();
      this.listEl.textContent = "";
      for (const m of this.kept) this.render(m);
    } catch (e) {
      this.o.conn.log(`reload ${this.o.channel}: ${e.message}`, "err");
    }
  }

  anomaly(what) {
    this.anomalies++;
    this.listEl.dataset.anomalies = String(this.anomalies);
    this.o.conn.log(`${this.o.channel}: ${what}`, "err");
  }

  onMessage(m) {
    // The SDK delivers each message once and in seq order; the page checks.
    if (m.seq <= this.lastSeq) {
      this.anomaly(`seq ${m.seq} after ${this.lastSeq}: duplicate or out of order`);
      return;
    }
    if (this.jumpOk) this.jumpOk = false;
    else if (m.seq !== this.lastSeq + 1) this.anomaly(`gap: seq ${m.seq} after ${this.lastSeq}`);
    this.lastSeq = m.seq;
    this.kept.push(slim(m));
    if (this.kept.length > KEEP) this.kept.splice(0, this.kept.length - KEEP);
    this.save();
    this.render(m);
    if (m.from && m.from !== this.o.me) this.showTyping(false);
  }

  save() {
    store.set(this.o.storeKey, { channel: this.o.channel, lastSeq: this.lastSeq, messages: this.kept });
  }

  render(m) {
    const d = m.data && typeof m.data === "object" ? m.data : {};
    const role = typeof d.role === "string" ? d.role : "";
    const base = {
      "data-testid": "message",
      "data-seq": m.seq,
      "data-role": role,
      "data-from": m.from || "",
    };
    let li;
    if (d.type === "handoff") {
      const bot = role === "bot";
      // The bot's announcement names the operator; the operator's own
      // request says what it does.
      const text = bot ? `${textOf(d).replace(/\.$/, "")}: ${this.o.nameOf(d.operator)}` : textOf(d);
      li = el("li", { ...base, class: "msg system", "data-kind": bot ? "handoff" : "handoff-request" },
        el("span", { class: "text", "data-testid": "message-text" }, text));
      if (bot && this.o.onHandoff) this.o.onHandoff(m);
    } else {
      const { who, mine } = this.o.describe(m);
      li = el("li", { ...base, class: `msg${mine ? " mine" : ""}`, "data-kind": "message" },
        el("div", { class: "meta" }, el("b", {}, who), el("span", {}, clock(m.ts)), el("span", { class: "seq" }, `#${m.seq}`)),
        el("div", { class: "text", "data-testid": "message-text" }, textOf(d)));
    }
    const atBottom = this.listEl.scrollHeight - this.listEl.scrollTop - this.listEl.clientHeight < 60;
    this.listEl.append(li);
    if (atBottom || m.from === this.o.me) this.listEl.scrollTop = this.listEl.scrollHeight;
    if (this.o.onSeen) this.o.onSeen(m);
  }

  async send() {
    const text = this.input.value.trim();
    if (!text) return;
    this.stopTyping();
    this.input.value = "";
    try {
      // Retry-safe: the SDK keeps one idempotency key across reconnects.
      await this.h.publish(this.o.channel, this.o.outgoing(text));
    } catch (e) {
      this.o.conn.log(`publish: ${e.code || ""} ${e.message}`, "err");
      if (!this.input.value) this.input.value = text;
    }
  }

  // Typing indicators: signals, never stored.
  typing() {
    if (!this.input.value) {
      this.stopTyping(); // emptied: not typing any more
      return;
    }
    const now = Date.now();
    if (now - this.typingSentAt >= TYPING_EVERY_MS) {
      this.typingSentAt = now;
      this.signal({ typing: true });
    }
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.stopTyping(), TYPING_IDLE_MS);
  }

  stopTyping() {
    clearTimeout(this.idleTimer);
    if (!this.typingSentAt) return;
    this.typingSentAt = 0;
    this.signal({ typing: false });
  }

  signal(data) {
    this.h.signal(this.o.channel, data).catch((e) => this.o.conn.log(`signal: ${e.code || ""} ${e.message}`, "warn"));
  }

  onSignal(s) {
    if (!s.data || typeof s.data.typing !== "boolean" || s.from === this.o.me) return;
    this.showTyping(s.data.typing, s.from);
  }

  showTyping(on, from) {
    clearTimeout(this.peerTimer);
    if (!on) {
      this.typingEl.textContent = "";
      delete this.typingEl.dataset.from;
      return;
    }
    this.typingEl.textContent = `${this.o.nameOf(from, this.infoOf(from))} is typing…`;
    this.typingEl.dataset.from = from || "";
    this.peerTimer = setTimeout(() => this.showTyping(false), TYPING_SHOW_MS);
  }

  infoOf(sub) {
    for (const c of this.present.values()) if (c.sub === sub) return c.info;
    return undefined;
  }

  // Presence: who is subscribed to the conversation now.
  loadPresence() {
    if (!this.sub) return;
    this.h.presence(this.o.channel).then(
      (clients) => {
        this.present = new Map(clients.map((c) => [c.conn, c]));
        if (this.o.onPresence) this.o.onPresence(this.present);
      },
      (e) => this.o.conn.log(`presence: ${e.code || ""} ${e.message}`, "warn"),
    );
  }

  onPresenceEvent(e) {
    if (!e.client) return;
    if (e.event === "join") this.present.set(e.client.conn, e.client);
    else if (e.event === "leave") this.present.delete(e.client.conn);
    if (e.event === "leave" && this.typingEl.dataset.from === e.client.sub) this.showTyping(false);
    if (this.o.onPresence) this.o.onPresence(this.present);
  }
}

// ---------------------------------------------------------------- visitor

async function visitorPage(cfg) {
  const site = cfg.sites.find((s) => s.id === params.get("site")) || cfg.sites[0];
  let conversation = params.get("conversation");
  if (!conversation) {
    conversation = `site${site.id}-${randomHex(10)}`;
    params.set("role", "visitor");
    params.set("site", site.id);
    params.set("conversation", conversation);
    history.replaceState(null, "", `?${params}`); // a reload keeps the conversation
  }
  const request = { role: "visitor", site: site.id, conversation };
  const first = await requestToken(request);

  const app = document.getElementById("app");
  app.textContent = "";
  app.append(fromTemplate("visitor-tpl"));
  document.title = `${site.name} · herald demo`;
  app.querySelector(".site-name").textContent = site.name;
  app.querySelector(".channel").textContent = first.channel;
  app.querySelector(".conversation").textContent = conversation;
  const conn = new Connection(request, first, app.querySelector(".conn-slot"));
  const presentEl = app.querySelector('[data-testid="operators-present"]');
  const opName = (sub) => (cfg.operators.find((o) => o.sub === sub) || {}).name;

  const showPresent = (present) => {
    const ops = new Map();
    for (const c of present.values()) {
      if (c.info && c.info.role === "operator") ops.set(c.sub, (c.info && c.info.name) || opName(c.sub) || c.sub);
    }
    presentEl.textContent = "";
    if (!ops.size) {
      presentEl.append(cfg.bot ? "Our assistant answers right away." : "We answer as soon as we can.");
      return;
    }
    let first = true;
    for (const [sub, name] of ops) {
      if (!first) presentEl.append(", ");
      first = false;
      presentEl.append(el("span", { class: "op", "data-testid": "present-operator", "data-sub": sub }, name));
    }
    presentEl.append(ops.size > 1 ? " are here" : " is here");
  };
  showPresent(new Map());

  const chat = new ChatView({
    conn,
    channel: first.channel,
    me: first.sub,
    root: app,
    storeKey: `herald-demo:${first.sub}:${first.channel}`,
    outgoing: (text) => ({ role: "user", content: text }),
    describe: (m) => {
      const d = m.data || {};
      if (m.from === first.sub) return { who: "You", mine: true };
      if (d.role === "bot") return { who: "Assistant", mine: false };
      if (d.role === "operator") return { who: d.name || opName(m.from) || "Operator", mine: false };
      return { who: m.from || "?", mine: false };
    },
    nameOf: (sub, info) => {
      if (sub === cfg.bot_sub) return "Assistant";
      return (info && info.name) || opName(sub) || "Someone";
    },
    onPresence: showPresent,
  });
  chat.open(); // subscribes with since; the SDK sends it once connected
  conn.h.connect().catch((e) => conn.log(`connect: ${e.message}`, "err"));
}

// --------------------------------------------------------------- operator

/**
 * The conversation list: every conversation of both websites, from the
 * summaries the stand-in backend publishes on dashboard_website_<site>
 * (automatic subscriptions), with an unread count of visitor messages.
 * Kept in localStorage; after a reload, what was published since comes
 * from the history API.
 */
class Dashboard {
  constructor(ctx) {
    this.ctx = ctx; // {conn, me, cfg, root, open(conv)}
    this.key = `herald-demo:${ctx.me.sub}:dashboard`;
    this.state = store.get(this.key, null) || { seqs: {}, convs: {}, read: {} };
    this.listEl = ctx.root.querySelector('[data-testid="conversation-list"]');
    this.openConv = null;
    this.render();
  }

  channels() {
    return this.ctx.cfg.sites.map((s) => s.dashboard);
  }

  /**
   * Subscribes to the dashboards before connecting, with `since` = what
   * this page last applied (0 the first time: the whole history). They are
   * automatic subscriptions of the token: the SDK then re-positions them
   * (`since`) on the first welcome and recovers them with `recover=` on
   * every reconnect.
   */
  start() {
    for (const ch of this.channels()) {
      const since = this.state.seqs[ch] || 0;
      const sub = this.ctx.conn.h.subscribe(ch, { since });
      sub.on("message", (m) => this.apply(m));
      sub.on("recovered", (r) => {
        if (!r.recovered) this.reload(ch);
      });
      sub.once("subscribed", (r) => {
        if (r.seq < since) this.ctx.stale(); // a new herald-dev.db: what is kept is stale
      });
    }
  }

  /** After recovered:false: the whole dashboard again, from the app's API. */
  async reload(ch) {
    try {
      for (const m of await this.ctx.conn.history(ch, 0)) this.apply(m);
    } catch (e) {
      this.ctx.conn.log(`reload of ${ch}: ${e.message}`, "err");
    }
  }

  /** Applies one summary; order-free and idempotent (live and catch-up may interleave). */
  apply(m) {
    const d = m.data;
    if (!d || d.type !== "message" || typeof d.conversation !== "string") return;
    const s = this.state;
    s.seqs[m.channel] = Math.max(s.seqs[m.channel] || 0, m.seq);
    const c = (s.convs[d.conversation] ||= {
      conversation: d.conversation,
      channel: d.channel,
      site: m.channel.replace("dashboard_website_", ""),
      dashSeq: 0,
      ts: 0,
      userSeqs: [],
      preview: null,
      handedOff: false,
    });
    const read = s.read[d.conversation] || 0;
    if (d.role === "user" && typeof d.seq === "number" && d.seq > read && !c.userSeqs.includes(d.seq)) {
      c.userSeqs.push(d.seq);
    }
    if (d.event === "handoff" && d.role === "bot") c.handedOff = true;
    if (m.seq > c.dashSeq) {
      c.dashSeq = m.seq;
      c.ts = m.ts;
      c.preview = { role: d.role, from: d.from, content: d.content, event: d.event };
    }
    if (this.openConv === d.conversation && typeof d.seq === "number") this.markRead(d.conversation, d.seq, false);
    this.save();
    this.render();
  }

  markRead(conv, seq, render = true) {
    const s = this.state;
    s.read[conv] = Math.max(s.read[conv] || 0, seq);
    const c = s.convs[conv];
    if (c) c.userSeqs = c.userSeqs.filter((x) => x > s.read[conv]);
    if (render) {
      this.save();
      this.render();
    }
  }

  save() {
    store.set(this.key, this.state);
  }

  who(p) {
    if (!p) return "";
    if (p.role === "user") return "Visitor";
    if (p.role === "bot") return "Assistant";
    const op = this.ctx.cfg.operators.find((o) => o.sub === p.from);
    return op ? op.name : p.from || "";
  }

  render() {
    const convs = Object.values(this.state.convs).sort((a, b) => b.ts - a.ts);
    this.listEl.textContent = "";
    if (!convs.length) {
      this.listEl.append(el("li", { class: "empty muted" }, "No conversation yet."));
      return;
    }
    for (const c of convs) {
      const unread = c.userSeqs.filter((x) => x > (this.state.read[c.conversation] || 0)).length;
      const site = this.ctx.cfg.sites.find((s) => s.id === c.site);
      const p = c.preview;
      const li = el("li", {
        class: `conv${this.openConv === c.conversation ? " open" : ""}`,
        "data-testid": "conversation",
        "data-conversation": c.conversation,
        "data-site": c.site,
        "data-unread": unread,
      },
      el("div", { class: "row" },
        el("span", { class: "site", title: site ? site.name : "" }, site ? site.name : `site ${c.site}`),
        el("span", { class: "id" }, c.conversation),
        el("span", { class: "unread", "data-testid": "unread", hidden: unread === 0 }, String(unread))),
      el("div", { class: "preview", "data-testid": "conversation-preview" },
        p ? `${this.who(p)}: ${p.event === "handoff" && p.role === "bot" ? "handed over to an operator" : p.content || ""}` : ""),
      c.handedOff ? el("div", { class: "tag" }, "taken over by an operator") : null);
      li.addEventListener("click", () => this.ctx.open(c.conversation));
      this.listEl.append(li);
    }
  }
}

/** The DM thread with the other operator: this operator's inbox chat_<username>. */
class DirectMessages {
  constructor(ctx) {
    this.ctx = ctx; // {conn, me, peer, root}
    this.inbox = ctx.me.inbox;
    this.key = `herald-demo:${ctx.me.sub}:inbox`;
    const kept = store.get(this.key, null);
    this.lastSeq = kept ? kept.lastSeq || 0 : 0;
    this.msgs = new Map((kept ? kept.messages || [] : []).map((m) => [m.seq, m]));
    const root = ctx.root.querySelector('[data-testid="dm-pane"]');
    root.querySelector(".peer").textContent = ctx.peer.name;
    root.querySelector(".inbox").textContent = ctx.me.inbox;
    root.querySelector(".peer-inbox").textContent = ctx.peer.inbox;
    this.listEl = root.querySelector('[data-testid="dm-messages"]');
    this.input = root.querySelector('[data-testid="dm-input"]');
    root.querySelector('[data-testid="dm-composer"]').addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });
    this.render();
  }

  /** As the dashboards: the inbox is automatic, positioned with `since`. */
  start() {
    const since = this.lastSeq;
    const sub = this.ctx.conn.h.subscribe(this.inbox, { since });
    sub.on("message", (m) => this.add(m));
    sub.on("recovered", (r) => {
      if (!r.recovered) this.reload();
    });
    sub.once("subscribed", (r) => {
      if (r.seq < since) this.ctx.stale();
    });
  }

  async reload() {
    try {
      for (const m of await this.ctx.conn.history(this.inbox, 0)) this.add(m);
    } catch (e) {
      this.ctx.conn.log(`reload of ${this.inbox}: ${e.message}`, "err");
    }
  }

  add(m) {
    this.lastSeq = Math.max(this.lastSeq, m.seq);
    if (m.data && m.data.type === "dm" && !this.msgs.has(m.seq)) {
      this.msgs.set(m.seq, slim(m));
      while (this.msgs.size > KEEP) this.msgs.delete(Math.min(...this.msgs.keys()));
      this.render();
    }
    store.set(this.key, { lastSeq: this.lastSeq, messages: [...this.msgs.values()] });
  }

  render() {
    this.listEl.textContent = "";
    for (const m of [...this.msgs.values()].sort((a, b) => a.seq - b.seq)) {
      const mine = m.from === this.ctx.me.sub;
      this.listEl.append(el("li", {
        class: `msg${mine ? " mine" : ""}`, "data-testid": "dm-message", "data-seq": m.seq, "data-from": m.from || "",
      },
      el("div", { class: "meta" }, el("b", {}, mine ? `You → ${this.ctx.peer.name}` : this.ctx.peer.name), el("span", {}, clock(m.ts))),
      el("div", { class: "text", "data-testid": "message-text" }, textOf(m.data))));
    }
    this.listEl.scrollTop = this.listEl.scrollHeight;
  }

  async send() {
    const text = this.input.value.trim();
    if (!text) return;
    this.input.value = "";
    try {
      // Into the peer's inbox; the stand-in backend copies it into ours.
      await this.ctx.conn.h.publish(this.ctx.peer.inbox, {
        type: "dm", content: text, to: this.ctx.peer.username, name: this.ctx.me.name,
      });
    } catch (e) {
      this.ctx.conn.log(`DM: ${e.code || ""} ${e.message}`, "err");
      if (!this.input.value) this.input.value = text;
    }
  }
}

async function operatorPage(cfg) {
  const me = cfg.operators.find((o) => o.id === params.get("op")) || cfg.operators[0];
  const peer = cfg.operators.find((o) => o !== me) || me;
  const request = { role: "operator", operator: me.id };
  const first = await requestToken(request);

  const app = document.getElementById("app");
  app.textContent = "";
  app.append(fromTemplate("operator-tpl"));
  document.title = `${me.name} · operator · herald demo`;
  app.querySelector('[data-testid="operator-name"]').textContent = me.name;
  const conn = new Connection(request, first, app.querySelector(".conn-slot"));
  const pane = app.querySelector('[data-testid="conversation-pane"]');
  const placeholder = app.querySelector('[data-testid="no-conversation"]');
  const titleEl = pane.querySelector('[data-testid="conversation-title"]');
  const presenceEl = pane.querySelector('[data-testid="conversation-presence"]');
  const handoffBtn = pane.querySelector('[data-testid="handoff"]');
  const nameOf = (sub, info) => {
    if (sub === cfg.bot_sub) return "Assistant";
    const op = cfg.operators.find((o) => o.sub === sub);
    if (op) return op.name;
    if (info && info.role === "visitor") return "Visitor";
    if (sub && sub.startsWith("visitor:")) return "Visitor";
    return (info && info.name) || sub || "?";
  };
  const openKey = `herald-demo:${me.sub}:open`;
  let chat = null;

  // The store was reset (a new herald-dev.db) under what this page kept:
  // forget it and start again.
  const stale = () => {
    for (const k of Object.keys(localStorage)) if (k.startsWith(`herald-demo:${me.sub}:`)) store.del(k);
    location.reload();
  };
  const dashboard = new Dashboard({ conn, me, cfg, root: app, stale, open: (c) => openConversation(c) });
  const dms = new DirectMessages({ conn, me, peer, root: app, stale });

  function showPresence(present) {
    presenceEl.textContent = "";
    const seen = new Set();
    for (const c of present.values()) {
      if (seen.has(c.sub)) continue;
      seen.add(c.sub);
      const you = c.conn === conn.conn || c.sub === me.sub;
      presenceEl.append(el("span", { class: "who", "data-testid": "present", "data-sub": c.sub },
        `● ${nameOf(c.sub, c.info)}${you ? " (you)" : ""}`));
    }
  }

  function setHandedOff(on) {
    handoffBtn.disabled = on;
    handoffBtn.textContent = on ? "Taken over" : "Take over";
  }

  function openConversation(conversation) {
    if (chat && chat.o.conversation === conversation) return;
    if (chat) chat.close();
    const c = dashboard.state.convs[conversation];
    const channel = (c && c.channel) || `chat_${conversation}`;
    dashboard.openConv = conversation;
    sessionStorage.setItem(openKey, conversation);
    pane.hidden = false;
    pane.dataset.conversation = conversation;
    placeholder.hidden = true;
    const site = cfg.sites.find((s) => c && s.id === c.site);
    titleEl.textContent = `${site ? site.name + " · " : ""}${conversation}`;
    presenceEl.textContent = "";
    setHandedOff(Boolean(c && c.handedOff));
    chat = new ChatView({
      conn,
      conversation,
      channel,
      me: me.sub,
      root: pane,
      storeKey: `herald-demo:${me.sub}:${channel}`,
      outgoing: (text) => ({ role: "operator", content: text, name: me.name }),
      describe: (m) => {
        const d = m.data || {};
        if (m.from === me.sub) return { who: "You", mine: true };
        if (d.role === "bot") return { who: "Assistant", mine: false };
        if (d.role === "user") return { who: "Visitor", mine: false };
        return { who: d.name || nameOf(m.from), mine: false };
      },
      nameOf,
      onSeen: (m) => dashboard.markRead(conversation, m.seq),
      onPresence: showPresence,
      onHandoff: () => setHandedOff(true),
    });
    chat.open();
    dashboard.render();
  }

  handoffBtn.addEventListener("click", async () => {
    if (!chat) return;
    handoffBtn.disabled = true;
    try {
      // The bot (here the stand-in) answers with a handoff event and stays silent.
      await conn.h.publish(chat.o.channel, {
        type: "handoff", role: "operator", name: me.name,
        content: `${me.name} takes over from the assistant.`,
      });
    } catch (e) {
      handoffBtn.disabled = false;
      conn.log(`handoff: ${e.code || ""} ${e.message}`, "err");
    }
  });

  dashboard.start();
  dms.start();
  const reopen = sessionStorage.getItem(openKey);
  if (reopen) openConversation(reopen);
  conn.h.connect().catch((e) => conn.log(`connect: ${e.message}`, "err"));
}

// ---------------------------------------------------------------- landing

function landingPage() {
  const app = document.getElementById("app");
  app.textContent = "";
  app.append(fromTemplate("landing-tpl"));
  const key = "herald-demo:landing-conversation";
  let conversation = sessionStorage.getItem(key);
  const visitorUrl = (site, conv) =>
    `/demo?${new URLSearchParams({ role: "visitor", site, conversation: conv })}`;
  const setVisitor = () => {
    app.querySelector(".pane-visitor").src = visitorUrl("1", conversation);
    app.querySelector(".visitor-1").href = visitorUrl("1", conversation);
    app.querySelector(".visitor-2").href = `/demo?${new URLSearchParams({ role: "visitor", site: "2" })}`;
  };
  if (!conversation) {
    conversation = `site1-${randomHex(10)}`;
    sessionStorage.setItem(key, conversation);
  }
  setVisitor();
  app.querySelector(".new-conversation").addEventListener("click", () => {
    conversation = `site1-${randomHex(10)}`;
    sessionStorage.setItem(key, conversation);
    setVisitor();
  });
}

// ------------------------------------------------------------------- main

async function main() {
  const role = params.get("role");
  if (!role) return landingPage();
  const r = await fetch("/demo/config");
  if (!r.ok) throw new Error(`GET /demo/config answered ${r.status}`);
  const cfg = await r.json();
  if (role === "visitor") return visitorPage(cfg);
  if (role === "operator") return operatorPage(cfg);
  throw new Error(`unknown role ${role}: use visitor or operator`);
}

main().catch((e) => fatal(`The demo could not start: ${e.message}`));
