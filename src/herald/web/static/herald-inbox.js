/*! herald-inbox.js: the <herald-inbox> web component and the HeraldInbox headless client.
 *
 *   <script src="https://herald.example/widget/herald-inbox.js" defer></script>
 *   <herald-inbox server="https://herald.example" user="u1" token="ut_..."></herald-inbox>
 *
 * No dependencies, no build step. The token is a short-lived *user* token minted by your
 * server (POST /v1/users/{id}/token with an API key); never put an API key in a page.
 * Styling: ::part(bell | badge | panel | item | mark-all-read | ...) and --herald-* properties.
 * Events: herald:notification (detail: the item), herald:read (detail: {id} or {all: true}),
 * herald:unread (detail: {count}), herald:error.
 */
(function () {
  "use strict";

  var DEFAULT_LABELS = {
    bell: "Notifications",
    title: "Notifications",
    unread: "{count} unread",
    markAllRead: "Mark all as read",
    empty: "No notifications yet",
    loading: "Loading\u2026",
    reconnecting: "Reconnecting\u2026",
    newItem: "New notification: {title}",
    error: "Notifications are unavailable right now",
  };

  function fill(text, values) {
    return String(text).replace(/\{(\w+)\}/g, function (_, k) {
      return values[k] === undefined ? "" : String(values[k]);
    });
  }

  function safeUrl(url) {
    // Only http(s) and relative links: an item's url never runs script in the embedding page.
    if (!url) return null;
    try {
      var u = new URL(url, document.baseURI);
      return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
    } catch (e) {
      return null;
    }
  }

  /** The headless client: the same calls the widget makes, for apps with their own UI. */
  class HeraldInbox extends EventTarget {
    constructor(options) {
      super();
      options = options || {};
      this.server = String(options.server || "").replace(/\/+$/, "");
      this.user = String(options.user || "");
      this.token = String(options.token || "");
      this.tokenProvider = options.tokenProvider || null; // async () => fresh user token
      this.pageSize = options.pageSize || 20;
      this.lastEventId = null;
      this.unreadCount = 0;
      this.connected = false;
      this._source = null;
      this._retry = null;
      this._backoff = 1000;
      this._closed = true;
    }

    _url(path, params) {
      var u = new URL(this.server + "/v1/users/" + encodeURIComponent(this.user) + "/inbox" + path);
      Object.keys(params || {}).forEach(function (k) {
        if (params[k] !== null && params[k] !== undefined) u.searchParams.set(k, params[k]);
      });
      return u.href;
    }

    async _fetch(path, init, params) {
      for (var attempt = 0; attempt < 2; attempt++) {
        var r = await fetch(this._url(path, params), Object.assign({}, init, {
          headers: { Authorization: "Bearer " + this.token, Accept: "application/json" },
        }));
        if (r.status === 401 && attempt === 0 && this.tokenProvider) {
          this.token = await this.tokenProvider();
          continue;
        }
        if (!r.ok) {
          var detail = "";
          try { detail = (await r.json()).detail || ""; } catch (e) { /* not problem+json */ }
          var err = new Error("herald: " + r.status + " " + detail);
          err.status = r.status;
          throw err;
        }
        return r.json();
      }
    }

    /** One page of the inbox, newest first: {items, unread_count, next_cursor, last_event_id}. */
    async list(opts) {
      opts = opts || {};
      var page = await this._fetch("", { method: "GET" }, {
        limit: opts.limit || this.pageSize,
        cursor: opts.cursor || null,
        unread_only: opts.unreadOnly ? "true" : null,
      });
      if (!opts.cursor && !opts.keepCount) {
        this._setUnread(page.unread_count);
        if (this.lastEventId === null) this.lastEventId = page.last_event_id;
      }
      return page;
    }

    async markRead(id) {
      var r = await this._fetch("/" + encodeURIComponent(id) + "/read", { method: "POST" });
      this._setUnread(r.unread_count);
      this.dispatchEvent(new CustomEvent("read", { detail: { id: id, item: r.item } }));
      return r;
    }

    async markAllRead() {
      var r = await this._fetch("/read-all", { method: "POST" });
      this._setUnread(0);
      this.dispatchEvent(new CustomEvent("read", { detail: { all: true } }));
      return r;
    }

    _setUnread(n) {
      if (typeof n !== "number" || n === this.unreadCount) return;
      this.unreadCount = n;
      this.dispatchEvent(new CustomEvent("unread", { detail: { count: n } }));
    }

    /** Open the live stream; resumes after ``lastEventId`` (from list() or the last event). */
    connect() {
      this._closed = false;
      this._open();
    }

    _open() {
      if (this._closed) return;
      var self = this;
      var es = new EventSource(this._url("/stream", { token: this.token, last_event_id: this.lastEventId }));
      this._source = es;
      es.onopen = function () {
        self._backoff = 1000;
        var again = self.connected === false && self._everOpen;
        self._everOpen = true;
        self.connected = true;
        self.dispatchEvent(new CustomEvent("open", { detail: { reconnected: again } }));
      };
      es.addEventListener("item", function (e) {
        if (e.lastEventId) self.lastEventId = e.lastEventId;
        var item = JSON.parse(e.data);
        self.dispatchEvent(new CustomEvent("notification", { detail: item }));
      });
      es.addEventListener("unread", function (e) {
        if (e.lastEventId) self.lastEventId = e.lastEventId;
        self._setUnread(JSON.parse(e.data).unread_count);
      });
      es.onerror = function () {
        self.connected = false;
        self.dispatchEvent(new CustomEvent("disconnect"));
        if (es.readyState === EventSource.CLOSED) {
          // Refused (expired token, too many streams, a herald shutting down): the browser
          // gives up, so reconnect ourselves, resuming after the last event, with backoff.
          self._source = null;
          clearTimeout(self._retry);
          self._retry = setTimeout(async function () {
            if (self.tokenProvider) {
              try { self.token = await self.tokenProvider(); } catch (err) { /* retry later */ }
            }
            self._open();
          }, self._backoff);
          self._backoff = Math.min(self._backoff * 2, 30000);
        }
        // Otherwise the browser reconnects by itself and sends Last-Event-ID.
      };
    }

    close() {
      this._closed = true;
      clearTimeout(this._retry);
      if (this._source) this._source.close();
      this._source = null;
      this.connected = false;
    }
  }

  var STYLE = [
    ":host{position:relative;display:inline-block;font-family:var(--herald-font,system-ui,sans-serif);",
    "--_accent:var(--herald-accent,#2563eb)}",
    "[part=bell]{position:relative;background:none;border:0;padding:6px;cursor:pointer;color:inherit;",
    "border-radius:var(--herald-radius,8px);line-height:0}",
    "[part=bell]:focus-visible,[part=item]:focus-visible,[part=mark-all-read]:focus-visible",
    "{outline:2px solid var(--_accent);outline-offset:2px}",
    "[part=bell] svg{width:var(--herald-bell-size,24px);height:var(--herald-bell-size,24px)}",
    "[part=badge]{position:absolute;top:0;right:0;min-width:18px;height:18px;padding:0 5px;box-sizing:border-box;",
    "border-radius:9px;background:var(--herald-badge-bg,#dc2626);color:var(--herald-badge-color,#fff);",
    "font:600 11px/18px var(--herald-font,system-ui,sans-serif);text-align:center}",
    "[hidden]{display:none!important}",
    "[part=panel]{position:absolute;right:0;top:calc(100% + 6px);z-index:var(--herald-z,1000);",
    "width:var(--herald-panel-width,360px);max-width:90vw;background:var(--herald-bg,#fff);color:var(--herald-color,#1f2328);",
    "border:1px solid var(--herald-border,#d0d7de);border-radius:var(--herald-radius,8px);",
    "box-shadow:0 8px 24px rgba(0,0,0,.15);overflow:hidden}",
    "[part=header]{display:flex;align-items:center;justify-content:space-between;padding:10px 12px;",
    "border-bottom:1px solid var(--herald-border,#d0d7de)}",
    "[part=title]{font-weight:600;margin:0;font-size:1em}",
    "[part=mark-all-read]{background:none;border:0;color:var(--_accent);cursor:pointer;font:inherit;font-size:.85em}",
    "[part=mark-all-read]:disabled{color:var(--herald-muted,#6e7781);cursor:default}",
    "[part=list]{list-style:none;margin:0;padding:0;max-height:var(--herald-panel-height,420px);overflow-y:auto}",
    "[part=item]{padding:10px 12px;border-bottom:1px solid var(--herald-border,#eaeef2);cursor:pointer;",
    "background:var(--herald-unread-bg,#eff6ff)}",
    "[part=item][data-read]{background:var(--herald-bg,#fff)}",
    "[part=item]:hover{filter:brightness(.97)}",
    ".t{font-weight:600;display:block}[data-read] .t{font-weight:400}",
    ".b{display:block;font-size:.9em;margin-top:2px;color:var(--herald-muted,#57606a)}",
    ".w{display:block;font-size:.75em;margin-top:4px;color:var(--herald-muted,#6e7781)}",
    "[part=empty],[part=status]{padding:16px 12px;color:var(--herald-muted,#6e7781);font-size:.9em;text-align:center}",
    ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}",
  ].join("");

  var BELL =
    '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" ' +
    'stroke-linejoin="round" aria-hidden="true" focusable="false"><path d="M18 8a6 6 0 0 0-12 0c0 7-3 9-3 9h18s-3-2-3-9"/>' +
    '<path d="M13.73 21a2 2 0 0 1-3.46 0"/></svg>';

  class HeraldInboxElement extends HTMLElement {
    static get observedAttributes() {
      return ["server", "user", "token", "labels", "locale"];
    }

    constructor() {
      super();
      this._labels = Object.assign({}, DEFAULT_LABELS);
      this._items = new Map(); // delivery id -> <li>
      this._next = null;
      this._loading = false;
      this.client = null;
      this.tokenProvider = null;
      var root = this.attachShadow({ mode: "open" });
      root.innerHTML =
        "<style>" + STYLE + "</style>" +
        '<button part="bell" type="button" aria-haspopup="dialog" aria-expanded="false">' + BELL +
        '<span part="badge" hidden></span></button>' +
        '<div part="panel" role="dialog" hidden>' +
        '<div part="header"><h2 part="title"></h2><button part="mark-all-read" type="button"></button></div>' +
        '<ul part="list" role="list"></ul><div part="empty" hidden></div><div part="status" hidden></div></div>' +
        '<div class="sr" aria-live="polite" role="status"></div>';
      this._bell = root.querySelector("[part=bell]");
      this._badge = root.querySelector("[part=badge]");
      this._panel = root.querySelector("[part=panel]");
      this._list = root.querySelector("[part=list]");
      this._empty = root.querySelector("[part=empty]");
      this._status = root.querySelector("[part=status]");
      this._markAll = root.querySelector("[part=mark-all-read]");
      this._live = root.querySelector(".sr");
      var self = this;
      this._bell.addEventListener("click", function () { self.toggle(); });
      this._markAll.addEventListener("click", function () { self.markAllRead(); });
      this._list.addEventListener("scroll", function () { self._maybeMore(); });
      this._list.addEventListener("keydown", function (e) { self._keys(e); });
      this._outside = function (e) {
        if (!self._panel.hidden && e.composedPath().indexOf(self) < 0) self.close();
      };
      this._escape = function (e) {
        if (e.key !== "Escape" || self._panel.hidden) return;
        var focus = document.activeElement;
        self.close();
        if (focus === self || focus === document.body || !focus) self._bell.focus();
      };
    }

    /** Translations: an object of strings (or the ``labels`` attribute, as JSON). */
    get labels() { return Object.assign({}, this._labels); }
    set labels(value) {
      this._labels = Object.assign({}, DEFAULT_LABELS, value || {});
      this._renderLabels();
    }

    connectedCallback() {
      document.addEventListener("click", this._outside, true);
      document.addEventListener("keydown", this._escape);
      this._renderLabels();
      this._start();
    }

    disconnectedCallback() {
      document.removeEventListener("click", this._outside, true);
      document.removeEventListener("keydown", this._escape);
      if (this.client) this.client.close();
      this.client = null;
    }

    attributeChangedCallback(name, old, value) {
      if (old === value) return;
      if (name === "labels") {
        try { this.labels = JSON.parse(value || "{}"); } catch (e) { this.labels = {}; }
        return;
      }
      if (name === "token" && this.client && old) {
        this.client.token = value || ""; // a refreshed token: the next (re)connect uses it
        return;
      }
      if (this.isConnected) this._start();
    }

    _start() {
      var server = this.getAttribute("server");
      var user = this.getAttribute("user");
      var token = this.getAttribute("token");
      if (this.client) this.client.close();
      this.client = null;
      if (!server || !user || !token) return;
      var self = this;
      var client = new HeraldInbox({
        server: server, user: user, token: token,
        tokenProvider: this.tokenProvider && function () { return self.tokenProvider(); },
      });
      this.client = client;
      this._items.clear();
      this._list.textContent = "";
      this._next = null;
      client.addEventListener("unread", function (e) { self._setBadge(e.detail.count); });
      client.addEventListener("notification", function (e) { self._onItem(e.detail); });
      client.addEventListener("disconnect", function () { self._setStatus(self._labels.reconnecting); });
      client.addEventListener("open", function (e) {
        self._setStatus(null);
        if (e.detail.reconnected) self._refreshReadStates();
      });
      this._setStatus(this._labels.loading);
      client.list().then(function (page) {
        if (self.client !== client) return;
        self._setStatus(null);
        self._setBadge(page.unread_count);
        self._append(page.items);
        self._next = page.next_cursor;
        client.connect();
      }).catch(function (err) {
        self._setStatus(self._labels.error);
        self._emit("herald:error", { message: String(err && err.message), status: err && err.status });
        setTimeout(function () { if (self.client === client) self._start(); }, 5000);
      });
    }

    _emit(name, detail) {
      this.dispatchEvent(new CustomEvent(name, { detail: detail, bubbles: true, composed: true }));
    }

    _renderLabels() {
      var l = this._labels;
      this.shadowRoot.querySelector("[part=title]").textContent = l.title;
      this._markAll.textContent = l.markAllRead;
      this._panel.setAttribute("aria-label", l.title);
      this._empty.textContent = l.empty;
      this._setBadge(this.client ? this.client.unreadCount : 0);
    }

    _setStatus(text) {
      this._status.hidden = !text;
      this._status.textContent = text || "";
    }

    _setBadge(n) {
      n = n || 0;
      this._badge.hidden = n === 0;
      this._badge.textContent = n > 99 ? "99+" : String(n);
      var label = this._labels.bell + (n ? ", " + fill(this._labels.unread, { count: n }) : "");
      this._bell.setAttribute("aria-label", label);
      this._markAll.disabled = n === 0;
      this._emit("herald:unread", { count: n });
    }

    _time(iso) {
      if (!iso) return "";
      var seconds = (Date.parse(iso) - Date.now()) / 1000;
      var locale = this.getAttribute("locale") || undefined;
      try {
        var rtf = new Intl.RelativeTimeFormat(locale, { numeric: "auto" });
        var steps = [[60, "second"], [60, "minute"], [24, "hour"], [7, "day"], [4.35, "week"], [12, "month"]];
        var v = seconds;
        for (var i = 0; i < steps.length; i++) {
          if (Math.abs(v) < steps[i][0]) return rtf.format(Math.round(v), steps[i][1]);
          v /= steps[i][0];
        }
        return rtf.format(Math.round(v), "year");
      } catch (e) {
        return new Date(iso).toLocaleString();
      }
    }

    _render(item) {
      var li = document.createElement("li");
      li.setAttribute("part", "item");
      li.setAttribute("role", "listitem");
      li.tabIndex = 0;
      li.dataset.id = item.id;
      if (item.category) li.dataset.category = item.category;
      var t = document.createElement("span"); t.className = "t"; t.textContent = item.title || "";
      var b = document.createElement("span"); b.className = "b"; b.textContent = item.body || "";
      var w = document.createElement("time"); w.className = "w"; w.textContent = this._time(item.created_at);
      if (item.created_at) w.dateTime = item.created_at;
      li.append(t, b, w);
      this._setRead(li, item.read);
      var self = this;
      li.addEventListener("click", function () { self._activate(item, li); });
      li.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); self._activate(item, li); }
      });
      return li;
    }

    _setRead(li, read) {
      if (read) li.setAttribute("data-read", ""); else li.removeAttribute("data-read");
    }

    _append(items) {
      var self = this;
      items.forEach(function (item) {
        if (self._items.has(item.id)) return;
        var li = self._render(item);
        self._items.set(item.id, li);
        self._list.appendChild(li);
      });
      this._empty.hidden = this._items.size > 0;
    }

    _onItem(item) {
      if (this._items.has(item.id)) return; // a replay after a reconnect: already shown
      var li = this._render(item);
      this._items.set(item.id, li);
      this._list.insertBefore(li, this._list.firstChild);
      this._empty.hidden = true;
      this._live.textContent = fill(this._labels.newItem, { title: item.title || "" });
      this._emit("herald:notification", item);
    }

    async _activate(item, li) {
      var url = safeUrl(item.url);
      if (!li.hasAttribute("data-read")) {
        this._setRead(li, true);
        try {
          await this.client.markRead(item.id);
          this._emit("herald:read", { id: item.id });
        } catch (e) {
          this._setRead(li, false);
          this._emit("herald:error", { message: String(e.message), status: e.status });
        }
      }
      if (url) window.location.assign(url);
    }

    async markAllRead() {
      if (!this.client) return;
      await this.client.markAllRead();
      var self = this;
      this._items.forEach(function (li) { self._setRead(li, true); });
      this._emit("herald:read", { all: true });
    }

    async _refreshReadStates() {
      // After a reconnect: new items were replayed; items read elsewhere meanwhile get their state.
      try {
        // The count stays the stream's: a listing may run before a replayed item is committed.
        var page = await this.client.list({ keepCount: true });
        var self = this;
        page.items.forEach(function (item) {
          var li = self._items.get(item.id);
          if (li) self._setRead(li, item.read);
        });
      } catch (e) { /* the next reconnect tries again */ }
    }

    async _maybeMore() {
      var l = this._list;
      if (!this._next || this._loading || l.scrollTop + l.clientHeight < l.scrollHeight - 40) return;
      this._loading = true;
      try {
        var page = await this.client.list({ cursor: this._next });
        this._append(page.items);
        this._next = page.next_cursor;
      } catch (e) {
        this._emit("herald:error", { message: String(e.message), status: e.status });
      } finally {
        this._loading = false;
      }
    }

    _keys(e) {
      if (e.key !== "ArrowDown" && e.key !== "ArrowUp" && e.key !== "Home" && e.key !== "End") return;
      var items = Array.prototype.slice.call(this._list.children);
      if (!items.length) return;
      var i = items.indexOf(this.shadowRoot.activeElement);
      if (e.key === "ArrowDown") i = Math.min(i + 1, items.length - 1);
      else if (e.key === "ArrowUp") i = Math.max(i - 1, 0);
      else if (e.key === "Home") i = 0;
      else i = items.length - 1;
      e.preventDefault();
      items[i].focus();
    }

    open() {
      this._panel.hidden = false;
      this._bell.setAttribute("aria-expanded", "true");
      var first = this._list.firstElementChild;
      if (first) first.focus();
      this._maybeMore();
    }

    close() {
      this._panel.hidden = true;
      this._bell.setAttribute("aria-expanded", "false");
    }

    toggle() {
      if (this._panel.hidden) this.open(); else this.close();
    }
  }

  window.HeraldInbox = HeraldInbox;
  if (!customElements.get("herald-inbox")) customElements.define("herald-inbox", HeraldInboxElement);
})();
