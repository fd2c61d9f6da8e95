// connectflow operator console: vanilla ES2020, no libraries, no build step.
//
// Served under a strict CSP (script-src 'self'; style-src 'self'; connect-src 'self'):
// no inline scripts, styles or event handler attributes, no eval. Every piece of data
// from the API (event types, names, queries, ids) is attacker-influenced, so the DOM
// is only ever built with createElement / createElementNS and textContent.
"use strict";

(() => {
  // ---------------------------------------------------------------------------
  // Constants
  // ---------------------------------------------------------------------------

  const TOKEN_KEY = "connectflow.token";
  // The program picked in the header (absent: every program the token sees).
  const PROGRAM_KEY = "connectflow.program";
  const HOUR_MS = 3600 * 1000;
  const DAY_MS = 24 * HOUR_MS;
  const DEFAULT_WINDOW_MS = 30 * DAY_MS;
  const CUSTOMER_ID_RE = /^[0-9]{1,22}$/;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const EVENTS_PAGE = 50;
  const CHANGES_PAGE = 500;
  const CHANGES_MAX_PAGES = 20;
  const INSTITUTIONS_LIMIT = 50;
  // The institutions' health (GET /v1/institutions): pages of this size, at
  // most this many of them for the institutions table (then the down and the
  // degraded ones, a page each); at most this many institutions of a customer.
  const HEALTH_PAGE = 500;
  const HEALTH_MAX_PAGES = 4;
  const CUSTOMER_INSTITUTIONS_MAX = 10;

  const STEPS = ["started", "institution_chosen", "mfa_challenged", "authenticated", "consent_granted"];
  const STEP_LABELS = {
    started: "Started",
    institution_chosen: "Institution chosen",
    mfa_challenged: "MFA challenged",
    authenticated: "Authenticated",
    consent_granted: "Consent granted",
  };
  // The query parameters of #/customers that are passed through to /v1/customers.
  const CUSTOMER_FILTERS = ["institution_id", "authentication", "consent", "first_event_since", "first_event_until", "limit"];

  const QUICK_WINDOWS = [
    ["24 h", DAY_MS],
    ["7 days", 7 * DAY_MS],
    ["30 days", 30 * DAY_MS],
    ["90 days", 90 * DAY_MS],
  ];

  const TONES = {
    granted: "good", authenticated: "good", active: "good",
    failed: "bad",
    abandoned: "warn", expired: "warn",
    in_progress: "info", mfa_challenge: "info",
    revoked: "muted", deleted: "muted", none: "muted", not_started: "muted",
  };

  // An institution's health status and its badge's tone.
  const HEALTH_TONES = { healthy: "good", degraded: "warn", down: "bad", unknown: "muted" };

  const app = document.getElementById("app");
  const bannerSlot = document.getElementById("banner");
  const nav = document.getElementById("nav");
  const programsSlot = document.getElementById("programs");

  // What the signed-in token is (GET /v1/me): its scopes and the programs it
  // sees. Asked once per page load and at sign-in; null when signed out.
  let me = null;

  // Incremented whenever a screen is (re)rendered: an answer arriving for an older
  // screen is dropped instead of being drawn over the current one.
  let screenGen = 0;

  // ---------------------------------------------------------------------------
  // DOM helpers
  // ---------------------------------------------------------------------------

  function appendChildren(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false || child === "") continue;
      el.append(child instanceof Node ? child : String(child)); // strings become text nodes
    }
  }

  // h("a", {href: "#/x", class: "c", testid: "t", onclick: fn}, "text", child, ...)
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    appendChildren(el, children); // before attributes, so that a <select>'s value can be set
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "testid") el.setAttribute("data-testid", value);
      else if (key === "value") el.value = value;
      else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    return el;
  }

  // SVG counterpart of h(): attributes are set verbatim (percent lengths are fine).
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      el.setAttribute(key === "testid" ? "data-testid" : key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  // Replaces an element's children; null, undefined, false and "" are skipped.
  function fill(el, ...children) {
    el.replaceChildren();
    appendChildren(el, children);
    return el;
  }

  function mount(...nodes) {
    fill(app, ...nodes);
  }

  function loadingEl(text = "Loading…") {
    return h("p", { class: "loading", role: "status" }, text);
  }

  function emptyState(text) {
    return h("div", { class: "empty", testid: "empty" }, text);
  }

  function removeErrors() {
    for (const el of document.querySelectorAll("[data-testid=error]")) el.remove();
  }

  // An error message; at most one is on the page at any time.
  function errorBox(message) {
    removeErrors();
    return h("div", { class: "error", role: "alert", testid: "error" }, message);
  }

  function showBanner(message) {
    removeErrors();
    const detail = String(message || "no answer").replace(/\.+$/, "");
    const retry = h("button", { type: "button", class: "retry", onclick: () => { removeErrors(); route(); } }, "Retry");
    fill(bannerSlot,
      h("div", { class: "banner", role: "alert", testid: "error" },
        h("span", {}, `The API is unavailable: ${detail}. `), retry));
  }

  function section(title, ...children) {
    return h("section", { class: "card" }, h("h2", {}, title), ...children);
  }

  function scrollTable(table) {
    return h("div", { class: "table-scroll" }, table);
  }

  function dataTable(columns, rows, attrs = {}) {
    const head = h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label || c)));
    return h("table", Object.assign({ class: "data" }, attrs), h("thead", {}, head), h("tbody", {}, rows));
  }

  // <dl> of [label, value] pairs; a null value shows as "—".
  function fields(pairs) {
    return h("dl", { class: "fields" }, pairs.map(([label, value]) => [
      h("dt", {}, label),
      h("dd", {}, value === null || value === undefined || value === "" ? "—" : value),
    ]));
  }

  // ---------------------------------------------------------------------------
  // Formatting
  // ---------------------------------------------------------------------------

  function fmtCount(n) {
    return typeof n === "number" && Number.isFinite(n) ? String(n) : "—";
  }

  function fmtPercent(x) {
    return typeof x === "number" && Number.isFinite(x) ? `${(x * 100).toFixed(1)}%` : "—";
  }

  function pctOf(n, total) {
    return typeof total === "number" && total > 0 && typeof n === "number" ? fmtPercent(n / total) : "—";
  }

  function fmtTime(ts) {
    if (ts === null || ts === undefined || ts === "") return "—";
    return String(ts).replace("T", " ");
  }

  function timeEl(ts) {
    if (ts === null || ts === undefined || ts === "") return "—";
    return h("time", { datetime: String(ts), title: String(ts) }, fmtTime(ts));
  }

  function orDash(v) {
    return v === null || v === undefined || v === "" ? "—" : String(v);
  }

  function badge(state, testid) {
    const text = state === null || state === undefined ? "" : String(state);
    const tone = Object.prototype.hasOwnProperty.call(TONES, text) ? TONES[text] : "muted";
    return h("span", { class: `badge tone-${tone}`, testid }, text);
  }

  function numCell(n, testid) {
    return h("td", { class: "num", testid }, fmtCount(n));
  }

  // ---------------------------------------------------------------------------
  // Institution health (GET /v1/institutions)
  // ---------------------------------------------------------------------------

  // "09:12 UTC" for a time of today (UTC), "2026-12-03 09:12 UTC" for another day.
  function fmtClock(ts) {
    const t = String(ts || "");
    if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}/.test(t)) return "—";
    return t.slice(0, 10) === iso(Date.now()).slice(0, 10) ? `${t.slice(11, 16)} UTC` : `${t.slice(0, 10)} ${t.slice(11, 16)} UTC`;
  }

  // "the last hour", "the last 2 hours", "the last 90 minutes".
  function fmtWindow(minutes) {
    const m = Number(minutes);
    if (!Number.isInteger(m) || m <= 0) return "the window";
    if (m === 60) return "the last hour";
    return m % 60 === 0 ? `the last ${m / 60} hours` : `the last ${m} minutes`;
  }

  function healthStatus(health) {
    const status = String((health && health.status) || "");
    return Object.prototype.hasOwnProperty.call(HEALTH_TONES, status) ? status : "unknown";
  }

  // What follows the status: " since 09:12 UTC: 41 of 52 sessions failed at
  // the bank in the last hour" (": 5 sessions in the last hour, too few to judge").
  function healthDetail(health) {
    const within = fmtWindow(health.window_minutes);
    const sessions = `${fmtCount(health.sessions)} session${health.sessions === 1 ? "" : "s"}`;
    if (healthStatus(health) === "unknown") return `: ${sessions} in ${within}, too few to judge`;
    return ` since ${fmtClock(health.since)}: ${fmtCount(health.institution_failures)} of ${sessions} failed at the bank in ${within}`;
  }

  // "down since 09:12 UTC: 41 of 52 sessions failed at the bank in the last hour".
  function healthSentence(health) {
    return healthStatus(health) + healthDetail(health);
  }

  // A pill "down" / "degraded" / "healthy" / "unknown", the sentence as its tooltip.
  function healthBadge(id, health, testid) {
    const status = healthStatus(health);
    return h("span", {
      class: `badge health tone-${HEALTH_TONES[status]}`, testid, "data-status": status,
      title: `Institution ${id} is ${healthSentence(health)} (evaluated ${fmtTime(health.evaluated_at)})`,
    }, status);
  }

  // Whether an institution's status deserves a notice, not a badge alone.
  function healthAlarming(health) {
    const status = healthStatus(health);
    return status === "down" || status === "degraded";
  }

  // "Institution 101732 is down since 09:12 UTC: 41 of 52 sessions failed at the bank in the last hour."
  function healthNotice(id, health) {
    return h("div", { class: `notice health-notice health-${healthStatus(health)}`, role: "status", testid: "institution-notice" },
      h("strong", {}, `Institution ${id} is ${healthStatus(health)}`), `${healthDetail(health)}.`);
  }

  // The line under a badge in the institutions table: "since 09:12 UTC · 41 of
  // 52 failed at the bank" ("5 sessions" while unknown).
  function healthLine(health) {
    const sessions = fmtCount(health.sessions);
    if (healthStatus(health) === "unknown") return `${sessions} session${health.sessions === 1 ? "" : "s"}`;
    return `since ${fmtClock(health.since)} · ${fmtCount(health.institution_failures)} of ${sessions} failed at the bank`;
  }

  // Places for institutions' health badges, filled once the statuses arrive.
  function healthSlots() {
    const slots = [];
    return {
      // An empty span for `id`'s badge (none without an id); `line`: with
      // healthLine() under it.
      slot(id, testid = "institution-health", line = false) {
        const el = h("span", { class: "health-slot" });
        if (id !== null && id !== undefined && id !== "") slots.push({ id: String(id), el, testid, line });
        return el;
      },
      ids() {
        return [...new Set(slots.map((slot) => slot.id))];
      },
      // found: Map id -> health; an institution not in it keeps its slot empty.
      show(found) {
        for (const { id, el, testid, line } of slots) {
          const health = found.get(id);
          fill(el, health ? healthBadge(id, health, testid) : null,
            health && line ? h("span", { class: "health-line", testid: `${testid}-line` }, healthLine(health)) : null);
        }
      },
    };
  }

  // The health of the institutions `ids` (the rows of the institutions table):
  // Map id -> health. Pages of the listing until every id is found, at most
  // HEALTH_MAX_PAGES; should more institutions remain, the down and the
  // degraded ones (a page each), so that a failing institution is not missed.
  async function institutionsHealth(ids) {
    const wanted = new Set(ids);
    const found = new Map();
    const take = (body) => {
      for (const inst of Array.isArray(body.institutions) ? body.institutions : []) {
        if (inst && wanted.has(inst.institution_id)) found.set(inst.institution_id, inst);
      }
      return body.next_cursor || null;
    };
    let cursor = null;
    let pages = 0;
    do {
      cursor = take(await api(`/v1/institutions?${buildQuery({ limit: HEALTH_PAGE, cursor })}`, { quiet: true }));
      pages += 1;
    } while (cursor && found.size < wanted.size && pages < HEALTH_MAX_PAGES);
    if (cursor && found.size < wanted.size) {
      const failing = await Promise.all(["down", "degraded"].map((status) =>
        api(`/v1/institutions?${buildQuery({ status, limit: HEALTH_PAGE })}`, { quiet: true })));
      failing.forEach(take);
    }
    return found;
  }

  // The health of a customer's few institutions, one GET each: Map id ->
  // health, without those never evaluated (404) or not answered.
  async function customerInstitutionsHealth(ids) {
    const answers = await Promise.all(ids.slice(0, CUSTOMER_INSTITUTIONS_MAX).map((id) =>
      api(`/v1/institutions/${encodeURIComponent(id)}`, { quiet: true }).then((health) => [id, health], () => null)));
    return new Map(answers.filter(Boolean));
  }

  // ---------------------------------------------------------------------------
  // Times and query strings
  // ---------------------------------------------------------------------------

  function iso(ms) {
    return new Date(ms).toISOString();
  }

  function parseTime(text) {
    if (typeof text !== "string" || !/^\d{4}-\d{2}-\d{2}T/.test(text)) return NaN;
    return Date.parse(text);
  }

  // A datetime-local value, interpreted as UTC.
  function fromInputValue(value) {
    const m = /^(\d{4,})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?$/.exec(value || "");
    if (!m) return NaN;
    const [, y, mo, d, hh, mi, ss, frac] = m;
    const ms = frac ? Number(frac.padEnd(3, "0")) : 0;
    return Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(hh), Number(mi), Number(ss || 0), ms);
  }

  // The datetime-local value (UTC, to the second) of a time.
  function toInputValue(ms) {
    return iso(ms).slice(0, 19);
  }

  // "a=1&b=x": values percent-encoded, except ":" (legal in a query) to keep times readable.
  function buildQuery(params) {
    return Object.entries(params)
      .filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v)).replace(/%3A/gi, ":")}`)
      .join("&");
  }

  function safeDecode(text) {
    try {
      return decodeURIComponent(text);
    } catch (_) {
      return text;
    }
  }

  // Parses "a=1&b=2" into an object; "+" is kept as is (a time zone offset, not a space).
  function parseQuery(query) {
    const out = {};
    for (const part of (query || "").split("&")) {
      if (!part) continue;
      const eq = part.indexOf("=");
      const key = safeDecode(eq < 0 ? part : part.slice(0, eq));
      out[key] = eq < 0 ? "" : safeDecode(part.slice(eq + 1));
    }
    return out;
  }

  function defaultWindow() {
    const until = Date.now();
    return { since: until - DEFAULT_WINDOW_MS, until };
  }

  // ---------------------------------------------------------------------------
  // Token and API
  // ---------------------------------------------------------------------------

  function getToken() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function setToken(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  }

  function clearToken() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(PROGRAM_KEY);
    me = null;
    renderPrograms();
  }

  // ---------------------------------------------------------------------------
  // Scopes and programs (from /v1/me)
  // ---------------------------------------------------------------------------

  function hasScope(scope) {
    return me !== null && Array.isArray(me.scopes) && me.scopes.includes(scope);
  }

  // The programs the token sees, [{id, name}], in id order.
  function visiblePrograms() {
    if (me === null || !Array.isArray(me.programs)) return [];
    return me.programs.filter((p) => p && typeof p.id === "string");
  }

  // The program picked, when the token sees more than one and one of them is
  // picked; null for all of them.
  function pickedProgram() {
    const id = sessionStorage.getItem(PROGRAM_KEY);
    const programs = visiblePrograms();
    return programs.length > 1 && programs.some((p) => p.id === id) ? id : null;
  }

  function pickProgram(id) {
    if (id) sessionStorage.setItem(PROGRAM_KEY, id);
    else sessionStorage.removeItem(PROGRAM_KEY);
  }

  // The parameter every list and stats request carries: the picked program, if any.
  function programFilter() {
    const id = pickedProgram();
    return id ? { program_id: id } : {};
  }

  // "Acme Card (acme-card)", or the id alone when the name is the id.
  function programLabel(program) {
    const name = typeof program.name === "string" ? program.name : "";
    return name && name !== program.id ? `${name} (${program.id})` : program.id;
  }

  // The header's programs: the one the token sees, or a picker between them.
  function renderPrograms() {
    const programs = visiblePrograms();
    programsSlot.hidden = me === null;
    if (me === null) {
      programsSlot.replaceChildren();
      return;
    }
    if (programs.length <= 1) {
      fill(programsSlot,
        h("span", { class: "programs-caption" }, "Program"),
        h("span", { class: "programs-label", testid: "programs-label" },
          programs.length ? programLabel(programs[0]) : "none declared"));
      return;
    }
    const picker = h("select", {
      id: "program-picker", testid: "program-picker", "aria-label": "Program", value: pickedProgram() || "",
      onchange: () => {
        pickProgram(picker.value);
        route();
      },
    },
    h("option", { value: "" }, "All programs"),
    programs.map((p) => h("option", { value: p.id }, programLabel(p))));
    fill(programsSlot, h("label", { class: "programs-caption", for: "program-picker" }, "Program"), picker);
  }

  // What the funnel's headline and the customer list say they cover.
  function programScopeText() {
    const id = pickedProgram();
    const programs = visiblePrograms();
    if (id) return `program ${programLabel(programs.find((p) => p.id === id))}`;
    return programs.length > 1 ? "all programs" : null;
  }

  // A screen (or a part of one) the token may not see: says which scope is missing.
  function scopeNote(text) {
    return h("div", { class: "notice scope-note", role: "status", testid: "scope-note" }, text);
  }

  function missingScope(scope, what) {
    return scopeNote(`This token lacks the '${scope}' scope: ${what} needs it.`);
  }

  // What a screen shows instead of an answer that failed: nothing more when
  // api() already showed it, a scope note for a 403, else the API's message.
  function failureEl(err) {
    if (err.handled) return h("p", { class: "muted" }, "Not loaded.");
    if (err.kind === "forbidden") {
      const text = err.message.charAt(0).toUpperCase() + err.message.slice(1);
      return scopeNote(/[.!]$/.test(text) ? text : `${text}.`);
    }
    return errorBox(err.message);
  }

  class ApiError extends Error {
    // kind: "unauthorized" (401), "forbidden" (403: a scope or program the token lacks),
    // "unavailable" (network error or 5xx), "http" (any other status)
    constructor(kind, status, code, message) {
      super(message);
      this.kind = kind;
      this.status = status;
      this.code = code;
      this.handled = false; // true once api() has shown it (sign-in screen or banner)
    }
  }

  async function readJson(res) {
    try {
      const text = await res.text();
      return text ? JSON.parse(text) : undefined;
    } catch (_) {
      return undefined;
    }
  }

  // GET a JSON document from the API with the bearer token.
  // A 401 signs out; a network error or a 5xx shows the banner with Retry (for the
  // current screen only). Either way the returned promise rejects with an ApiError.
  // options.token: check this token instead of the stored one; options.quiet: only reject.
  async function api(path, options = {}) {
    const gen = screenGen;
    const token = options.token !== undefined ? options.token : getToken();
    let res;
    try {
      res = await fetch(path, { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    } catch (err) {
      throw report(new ApiError("unavailable", 0, "network", (err && err.message) || "network error"), options, gen, token);
    }
    const body = await readJson(res);
    if (res.ok) {
      if (body === undefined || body === null || typeof body !== "object") {
        throw report(new ApiError("unavailable", res.status, "invalid_response", `unreadable answer (HTTP ${res.status})`), options, gen, token);
      }
      return body;
    }
    const error = body && typeof body.error === "object" && body.error !== null ? body.error : {};
    const code = typeof error.code === "string" ? error.code : "";
    const message = typeof error.message === "string" && error.message ? error.message : `HTTP ${res.status}`;
    const kind = res.status === 401 ? "unauthorized"
      : res.status >= 500 ? "unavailable"
        : res.status === 403 ? "forbidden" : "http";
    throw report(new ApiError(kind, res.status, code, message), options, gen, token);
  }

  function report(err, options, gen, token) {
    if (options.quiet) return err;
    if (err.kind === "unauthorized") {
      err.handled = true;
      if (getToken() === token) { // only the first of several parallel 401s signs out
        clearToken();
        renderSignIn("Token rejected: sign in again");
      }
    } else if (err.kind === "unavailable") {
      err.handled = true;
      if (gen === screenGen) showBanner(err.message);
    }
    return err;
  }

  // ---------------------------------------------------------------------------
  // Routing
  // ---------------------------------------------------------------------------

  function parseRoute() {
    const raw = location.hash.replace(/^#/, "");
    const q = raw.indexOf("?");
    const path = q < 0 ? raw : raw.slice(0, q);
    const query = q < 0 ? "" : raw.slice(q + 1);
    const parts = path.split("/").filter(Boolean);
    if (parts.length === 0) return { name: "home" };
    if (parts[0] === "customer" && parts.length <= 2) {
      return { name: "customer", id: parts.length === 2 ? safeDecode(parts[1]) : null };
    }
    if (parts[0] === "funnel" && parts.length === 1) return { name: "funnel", query };
    if (parts[0] === "customers" && parts.length === 1) return { name: "customers", query };
    return { name: "unknown" };
  }

  function route() {
    bannerSlot.replaceChildren();
    if (!getToken()) {
      renderSignIn();
      return;
    }
    if (me === null) {
      loadMe();
      return;
    }
    const r = parseRoute();
    if (r.name === "customer") renderCustomer(r.id);
    else if (r.name === "funnel") renderFunnel(parseQuery(r.query));
    else if (r.name === "customers") renderCustomers(r.query);
    else {
      history.replaceState(null, "", "#/funnel");
      route();
    }
  }

  // Goes to a hash; re-renders when it is already the current one.
  function navigate(hash) {
    const before = location.hash;
    location.hash = hash;
    if (location.hash === before) route();
  }

  // The stored token's /v1/me (a page loaded with a token in the session), then the screen.
  async function loadMe() {
    const gen = beginScreen(null, "Loading");
    mount(loadingEl());
    let body;
    try {
      body = await api("/v1/me");
    } catch (err) {
      if (isLive(gen)) mount(failureEl(err));
      return;
    }
    if (!isLive(gen)) return;
    me = body;
    renderPrograms();
    route();
  }

  function setNav(active) {
    nav.hidden = !getToken();
    programsSlot.hidden = !getToken() || me === null;
    for (const link of nav.querySelectorAll("a[data-screen]")) {
      if (link.getAttribute("data-screen") === active) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  // Starts rendering a screen; returns its generation.
  function beginScreen(name, title) {
    screenGen += 1;
    removeErrors();
    setNav(name);
    document.title = `${title} · connectflow console`;
    return screenGen;
  }

  function isLive(gen) {
    return gen === screenGen;
  }

  // ---------------------------------------------------------------------------
  // Sign-in
  // ---------------------------------------------------------------------------

  function renderSignIn(message) {
    beginScreen(null, "Sign in");
    bannerSlot.replaceChildren();
    const input = h("input", {
      type: "password", id: "token", name: "token", autocomplete: "off",
      spellcheck: "false", testid: "token-input",
    });
    const button = h("button", { type: "submit", class: "primary", testid: "sign-in-submit" }, "Sign in");
    const status = h("div", { class: "form-status" });
    const form = h("form", { class: "card sign-in", testid: "sign-in", novalidate: true },
      h("h1", {}, "connectflow console"),
      h("label", { for: "token" }, "API token"),
      input,
      button,
      status);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      submitSignIn(input, button, status);
    });
    if (message) status.append(errorBox(message));
    mount(h("div", { class: "sign-in-wrap" }, form));
    input.focus();
  }

  function signInErrorText(err) {
    if (err.kind === "unauthorized") return "Token rejected";
    if (err.kind === "unavailable") return `The API is unavailable (${err.message})`;
    return err.message;
  }

  async function submitSignIn(input, button, status) {
    const token = input.value.trim();
    if (!token) {
      fill(status, errorBox("Enter the API token"));
      return;
    }
    if (!/^[\x21-\x7e]+$/.test(token)) {
      fill(status, errorBox("Token rejected: a token is printable ASCII without spaces"));
      return;
    }
    const gen = screenGen;
    removeErrors();
    button.disabled = true;
    fill(status, loadingEl());
    let body;
    try {
      // Any valid token may sign in (/v1/me needs no scope); what it may see is in the answer.
      body = await api("/v1/me", { token, quiet: true });
    } catch (err) {
      if (!isLive(gen)) return;
      button.disabled = false;
      fill(status, errorBox(signInErrorText(err)));
      input.focus();
      return;
    }
    if (!isLive(gen)) return;
    setToken(token);
    me = body;
    renderPrograms();
    const r = parseRoute();
    if (r.name === "home" || r.name === "unknown") navigate("#/funnel");
    else route(); // back to the screen the address names (e.g. after "Token rejected")
  }

  function signOut() {
    clearToken();
    try {
      history.replaceState(null, "", location.pathname + location.search);
    } catch (_) {
      // keep the hash
    }
    renderSignIn();
  }

  // ---------------------------------------------------------------------------
  // Customer screen: #/customer and #/customer/<id>
  // ---------------------------------------------------------------------------

  function renderCustomer(id) {
    const gen = beginScreen("customer", id ? `Customer ${id}` : "Customer");
    if (!hasScope("read")) {
      mount(h("div", { class: "screen" }, missingScope("read", "the customer screen")));
      return;
    }
    const results = h("div", { class: "results" });
    mount(h("div", { class: "screen" }, customerSearchForm(id || ""), results));
    if (id === null) {
      results.append(h("p", { class: "hint" },
        "Enter a customer id to see their consent, authentication, shared accounts and event timeline."));
      return;
    }
    if (!CUSTOMER_ID_RE.test(id)) {
      results.append(errorBox("A customer id is 1 to 22 digits"));
      return;
    }
    loadCustomer(id, results, gen);
  }

  function customerSearchForm(value) {
    const input = h("input", {
      type: "search", id: "customer-id", name: "customer", inputmode: "numeric", autocomplete: "off",
      placeholder: "e.g. 1005061234", testid: "customer-search", value,
    });
    const status = h("div", { class: "form-status" });
    const form = h("form", { class: "card search-form", role: "search", novalidate: true },
      h("label", { for: "customer-id" }, "Customer id"),
      h("div", { class: "inline" },
        input,
        h("button", { type: "submit", class: "primary", testid: "customer-search-submit" }, "Find")),
      status);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const id = input.value.trim();
      if (!CUSTOMER_ID_RE.test(id)) {
        fill(status, errorBox("A customer id is 1 to 22 digits"));
        input.focus();
        return;
      }
      navigate(`#/customer/${id}`);
    });
    return form;
  }

  async function loadCustomer(id, results, gen) {
    const base = `/v1/customers/${encodeURIComponent(id)}`;
    fill(results, loadingEl());
    const changesPromise = loadAllChanges(base);
    changesPromise.catch(() => {}); // awaited below; this only silences an early rejection

    let lifecycle;
    try {
      lifecycle = await api(`${base}/lifecycle`);
    } catch (err) {
      if (!isLive(gen)) return;
      fill(results, customerLoadError(err, id));
      return;
    }
    if (!isLive(gen)) return;

    const timelineBox = h("div", {}, loadingEl());
    const health = healthSlots();
    const notices = h("div", { class: "health-notices", testid: "institution-notices" });
    fill(results,
      lifecycleCard(lifecycle, health, notices),
      accountsSection(lifecycle.institution_logins || [], health),
      section("Timeline", timelineBox));
    // The health of the customer's institutions needs `stats`: without it, no request and no badge.
    if (hasScope("stats")) loadCustomerHealth(health, notices, gen);

    let changes;
    try {
      changes = await changesPromise;
    } catch (err) {
      if (!isLive(gen)) return;
      fill(timelineBox, failureEl(err));
      return;
    }
    if (!isLive(gen)) return;
    renderTimeline(base, changes, timelineBox, gen);
  }

  // A badge by each of the customer's institutions, and a notice for one
  // down or degraded; one never evaluated (404) or not answered shows nothing.
  async function loadCustomerHealth(health, notices, gen) {
    const found = await customerInstitutionsHealth(health.ids());
    if (!isLive(gen)) return;
    health.show(found);
    fill(notices, [...found].filter(([, doc]) => healthAlarming(doc)).map(([id, doc]) => healthNotice(id, doc)));
  }

  function customerLoadError(err, id) {
    if (!err.handled && err.status === 404) return emptyState(`No customer with id ${id}`);
    return failureEl(err);
  }

  // Every change of the customer (at most CHANGES_MAX_PAGES pages).
  async function loadAllChanges(base) {
    const changes = [];
    let cursor = null;
    for (let page = 0; page < CHANGES_MAX_PAGES; page += 1) {
      const body = await api(`${base}/changes?${buildQuery({ limit: CHANGES_PAGE, cursor })}`);
      changes.push(...(Array.isArray(body.changes) ? body.changes : []));
      cursor = body.next_cursor || null;
      if (!cursor) return { changes, complete: true };
    }
    return { changes, complete: false };
  }

  function lifecycleCard(lc, health, notices) {
    const consent = lc.consent || {};
    const auth = lc.authentication || {};
    const funnel = lc.funnel || {};
    const steps = funnel.steps || {};
    const last = lc.last_event;
    return h("section", { class: "card lifecycle", testid: "lifecycle-card" },
      h("div", { class: "card-head" },
        h("h2", {}, "Customer ", h("span", { class: "mono" }, orDash(lc.customer_id))),
        h("p", { class: "muted" },
          `${fmtCount(lc.event_count)} events · version ${fmtCount(lc.version)} · updated ${fmtTime(lc.updated_at)}`),
        programLine(lc.program_id)),
      notices,
      h("div", { class: "panels" },
        consentPanel(consent),
        h("div", { class: "panel" },
          h("h3", {}, "Authentication"),
          fields([
            ["State", badge(auth.state, "auth-state")],
            ["Since", timeEl(auth.since)],
            ["Reason", h("span", { class: "reason", testid: "auth-reason" }, auth.reason ? String(auth.reason) : "")],
            ["Error code", auth.error_code === null || auth.error_code === undefined ? null : String(auth.error_code)],
          ])),
        h("div", { class: "panel" },
          h("h3", {}, "Funnel"),
          h("div", { class: "steps" }, STEPS.map((step) => stepBadge(step, steps[step] === true))),
          fields([
            ["First event", timeEl(funnel.first_event_at)],
            ["Institution", funnel.institution_id
              ? [h("span", { class: "mono" }, String(funnel.institution_id)), health.slot(funnel.institution_id, "customer-institution-health")]
              : null],
            ["Last event", last ? [h("span", { class: "mono" }, orDash(last.event_type)), " at ", timeEl(last.occurred_at)] : null],
          ]))));
  }

  // The customer's program: its id, and its name when the token sees it.
  function programLine(id) {
    const program = visiblePrograms().find((p) => p.id === id);
    const name = program && program.name && program.name !== id ? String(program.name) : null;
    return h("p", { class: "program-line" },
      h("span", { class: "muted" }, "Program "),
      h("span", { class: "mono", testid: "customer-program" }, orDash(id)),
      name ? h("span", { class: "muted" }, ` · ${name}`) : null);
  }

  function consentPanel(consent) {
    const expiry = consent.authorization_expires_at
      ? [timeEl(consent.authorization_expires_at), consent.expired ? [" ", badge("expired")] : null]
      : (consent.expired ? badge("expired") : null);
    const rev = consent.revocation;
    return h("div", { class: "panel" },
      h("h3", {}, "Consent"),
      fields([
        ["State", badge(consent.state, "consent-state")],
        ["Since", timeEl(consent.since)],
        ["Granted", timeEl(consent.granted_at)],
        ["Authorized", timeEl(consent.authorized_at)],
        ["Authorization expires", expiry],
      ]),
      rev ? h("div", { class: "revocation" },
        h("h4", {}, "Revocation"),
        fields([
          ["Revoked", timeEl(rev.revoked_at)],
          ["By", orDash(rev.revoked_by)],
          ["Login", rev.institution_login_id ? String(rev.institution_login_id) : "every login"],
          ["Reason", orDash(rev.reason)],
          ["Event", h("span", { class: "mono" }, orDash(rev.event_id))],
        ])) : null);
  }

  function stepBadge(step, reached) {
    return h("span", { class: `step ${reached ? "reached" : "not-reached"}`, title: reached ? "reached" : "not reached" },
      h("span", { class: "step-mark", "aria-hidden": "true" }, reached ? "✓" : "·"),
      STEP_LABELS[step],
      h("span", { class: "sr-only" }, reached ? " (reached)" : " (not reached)"));
  }

  function accountsSection(logins, health) {
    const rows = [];
    for (const login of logins) {
      for (const account of login.accounts || []) rows.push(accountRow(login, account, health));
    }
    return section("Shared accounts",
      rows.length
        ? scrollTable(dataTable(["Institution", "Login id", "Account id", "Type", "Name", "Last 4", "Status"], rows))
        : h("p", { class: "muted" }, "No shared accounts."),
      logins.length ? loginsTable(logins, health) : null);
  }

  function accountRow(login, account, health) {
    return h("tr", { testid: "account-row" },
      h("td", { class: "mono" }, orDash(login.institution_id), health.slot(login.institution_id)),
      h("td", { class: "mono" }, orDash(login.institution_login_id)),
      h("td", { class: "mono" }, orDash(account.account_id)),
      h("td", {}, orDash(account.type)),
      h("td", {}, orDash(account.name)),
      h("td", { class: "mono" }, account.last4 ? `…${account.last4}` : "—"),
      h("td", {}, badge(account.status)));
  }

  function loginsTable(logins, health) {
    const rows = logins.map((login) => h("tr", {},
      h("td", { class: "mono" }, orDash(login.institution_login_id)),
      h("td", { class: "mono" }, orDash(login.institution_id), health.slot(login.institution_id)),
      h("td", {}, login.oauth === true ? "yes" : login.oauth === false ? "no" : "—"),
      h("td", {}, timeEl(login.authorized_at)),
      h("td", {}, timeEl(login.authorization_expires_at), login.expired ? [" ", badge("expired")] : null),
      numCell((login.accounts || []).length)));
    return h("details", { class: "logins" },
      h("summary", {}, `Institution logins (${logins.length})`),
      scrollTable(dataTable(["Login id", "Institution", "OAuth", "Authorized", "Authorization expires", { label: "Accounts", num: true }], rows)));
  }

  // --- Timeline -----------------------------------------------------------------

  // event_id -> the changes it caused
  function indexChanges(changes) {
    const index = new Map();
    for (const change of changes) {
      for (const cause of change.caused_by || []) {
        if (!cause || typeof cause.event_id !== "string") continue;
        if (!index.has(cause.event_id)) index.set(cause.event_id, []);
        index.get(cause.event_id).push(change);
      }
    }
    return index;
  }

  function transition(name, from, to, reason) {
    const tail = reason ? ` (${reason})` : "";
    return from === to ? `${name}: ${to}${tail}` : `${name}: ${from} → ${to}${tail}`;
  }

  // "authentication: in_progress → authenticated; consent: none → granted; accounts", or "—".
  function describeChanges(changes) {
    const parts = [];
    for (const change of changes || []) {
      const changed = new Set(change.changed || []);
      const before = change.before || null;
      const after = change.after || {};
      if (changed.has("authentication")) {
        const a = after.authentication || {};
        parts.push(transition("authentication", before ? orDash(before.authentication && before.authentication.state) : "not_started",
          orDash(a.state), a.reason));
      }
      if (changed.has("consent")) {
        parts.push(transition("consent", before ? orDash(before.consent && before.consent.state) : "none",
          orDash(after.consent && after.consent.state)));
      }
      if (changed.has("accounts")) parts.push("accounts");
      if (change.reason === "authorization_expired") parts.push("authorization expired");
    }
    return parts.length ? [...new Set(parts)].join("; ") : "—";
  }

  function eventDetails(ev) {
    const parts = [];
    if (ev.error_code !== null && ev.error_code !== undefined) parts.push(`error ${ev.error_code}`);
    if (ev.institution_login_id) parts.push(`login ${ev.institution_login_id}`);
    if (ev.oauth === true) parts.push("oauth");
    if (ev.mfa === true) parts.push("mfa");
    if (Array.isArray(ev.accounts) && ev.accounts.length) {
      parts.push(`accounts ${ev.accounts.map((a) => `…${orDash(a && a.last4)} ${orDash(a && a.status)}`).join(", ")}`);
    }
    if (Array.isArray(ev.deleted_account_ids) && ev.deleted_account_ids.length) {
      parts.push(`deleted ${ev.deleted_account_ids.map(String).join(", ")}`);
    }
    if (ev.query) parts.push(`query “${ev.query}”`);
    if (ev.revoked_by) parts.push(`revoked by ${ev.revoked_by}`);
    if (ev.reason) parts.push(`reason “${ev.reason}”`);
    if (ev.source && ev.source !== "finicity") parts.push(`source ${ev.source}`);
    return parts.length ? parts.join(" · ") : "—";
  }

  function timelineRow(ev, index) {
    return h("tr", { testid: "timeline-row" },
      h("td", { class: "mono", testid: "event-type" }, String(ev.event_type ?? "")),
      h("td", { class: "time" }, timeEl(ev.occurred_at)),
      h("td", { class: "time" }, timeEl(ev.received_at)),
      h("td", { class: "time" }, timeEl(ev.recorded_at)),
      h("td", { class: "mono" }, orDash(ev.institution_id)),
      h("td", { class: "changed" }, describeChanges(index.get(ev.event_id))),
      h("td", { class: "details" }, eventDetails(ev)));
  }

  function renderTimeline(base, changesResult, box, gen) {
    const index = indexChanges(changesResult.changes);
    const table = dataTable(
      ["Event type", "Occurred", "Received", "Recorded", "Institution", "What it changed", "Details"], [],
      { testid: "timeline", class: "data timeline" });
    const tbody = table.tBodies[0];
    const more = h("button", { type: "button", class: "secondary", testid: "timeline-more" }, "Load more");
    const footer = h("div", { class: "more-row" });
    fill(box,
      changesResult.complete ? null
        : h("p", { class: "notice" }, `Only the first ${CHANGES_MAX_PAGES * CHANGES_PAGE} changes were loaded: "what it changed" may be missing for later events.`),
      scrollTable(table),
      footer);

    let cursor = null;
    const loadPage = async () => {
      more.disabled = true;
      fill(footer, loadingEl());
      let body;
      try {
        body = await api(`${base}/events?${buildQuery({ limit: EVENTS_PAGE, cursor })}`);
      } catch (err) {
        if (!isLive(gen)) return;
        more.disabled = false;
        fill(footer, err.handled ? "" : failureEl(err), cursor ? more : "");
        return;
      }
      if (!isLive(gen)) return;
      for (const ev of Array.isArray(body.events) ? body.events : []) tbody.append(timelineRow(ev, index));
      cursor = body.next_cursor || null;
      more.disabled = false;
      fill(footer,
        tbody.rows.length ? "" : h("p", { class: "muted" }, "No events."),
        cursor ? more : "");
    };
    more.addEventListener("click", loadPage);
    loadPage();
  }

  // ---------------------------------------------------------------------------
  // Funnel screen: #/funnel?since=&until=&bucket=
  // ---------------------------------------------------------------------------

  // The window named by the address, defaults filling what is absent or invalid.
  function windowFromParams(params) {
    const bucket = params.bucket === "hour" ? "hour" : "day";
    let until = parseTime(params.until);
    if (Number.isNaN(until)) until = Date.now();
    let since = parseTime(params.since);
    if (Number.isNaN(since)) since = until - DEFAULT_WINDOW_MS;
    const error = since < until ? null : "The window is empty: since must be before until";
    return { since, until, bucket, error };
  }

  function renderFunnel(params) {
    const gen = beginScreen("funnel", "Funnel");
    if (!hasScope("stats")) {
      mount(h("div", { class: "screen" },
        missingScope("stats", "the funnel"),
        hasScope("read") ? h("p", { class: "hint" }, h("a", { href: "#/customer" }, "Find a customer")) : null));
      return;
    }
    const win = windowFromParams(params);
    const results = h("div", { class: "results" });
    mount(h("div", { class: "screen" }, funnelForm(win), results));
    if (win.error) {
      results.append(errorBox(win.error));
      return;
    }
    loadFunnel(win, results, gen);
  }

  function funnelForm(win) {
    const since = h("input", { type: "datetime-local", id: "since", step: "1", testid: "since", value: toInputValue(win.since) });
    const until = h("input", { type: "datetime-local", id: "until", step: "1", testid: "until", value: toInputValue(win.until) });
    const bucket = h("select", { id: "bucket", testid: "bucket", value: win.bucket },
      h("option", { value: "hour" }, "hour"),
      h("option", { value: "day" }, "day"));
    const status = h("div", { class: "form-status" });
    const apply = () => applyWindow(since, until, bucket, status);
    const quick = QUICK_WINDOWS.map(([label, span]) => h("button", {
      type: "button", class: "secondary",
      onclick: () => {
        const now = Date.now();
        since.value = toInputValue(now - span);
        until.value = toInputValue(now);
        apply();
      },
    }, label));
    const form = h("form", { class: "card window-form", novalidate: true },
      h("div", { class: "field" }, h("label", { for: "since" }, "Since ", h("span", { class: "unit" }, "UTC")), since),
      h("div", { class: "field" }, h("label", { for: "until" }, "Until ", h("span", { class: "unit" }, "UTC")), until),
      h("div", { class: "field" }, h("label", { for: "bucket" }, "Bucket"), bucket),
      h("div", { class: "field quick" }, h("span", { class: "field-label" }, "Last"), h("div", { class: "inline" }, quick)),
      h("div", { class: "field submit" },
        h("button", { type: "submit", class: "primary", testid: "apply-window" }, "Apply")),
      status);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      apply();
    });
    return form;
  }

  function applyWindow(sinceInput, untilInput, bucketSelect, status) {
    const since = fromInputValue(sinceInput.value);
    const until = fromInputValue(untilInput.value);
    if (Number.isNaN(since) || Number.isNaN(until)) {
      fill(status, errorBox("Enter a valid since and until (UTC)"));
      return;
    }
    if (since >= until) {
      fill(status, errorBox("The window is empty: since must be before until"));
      return;
    }
    const bucket = bucketSelect.value === "hour" ? "hour" : "day";
    navigate(`#/funnel?${buildQuery({ since: iso(since), until: iso(until), bucket })}`);
  }

  async function loadFunnel(win, results, gen) {
    const range = { since: iso(win.since), until: iso(win.until) };
    const program = programFilter();
    fill(results, loadingEl());
    let funnel;
    let series;
    let institutions;
    try {
      [funnel, series, institutions] = await Promise.all([
        api(`/v1/stats/funnel?${buildQuery({ ...range, ...program })}`),
        api(`/v1/stats/timeseries?${buildQuery({ ...range, bucket: win.bucket, ...program })}`),
        api(`/v1/stats/institutions?${buildQuery({ ...range, limit: INSTITUTIONS_LIMIT, ...program })}`),
      ]);
    } catch (err) {
      if (!isLive(gen)) return;
      fill(results, failureEl(err));
      return;
    }
    if (!isLive(gen)) return;
    const linkRange = { since: institutions.since || funnel.since || range.since, until: institutions.until || funnel.until || range.until };
    fill(results,
      headline(funnel, series.bucket || win.bucket),
      funnel.customers === 0 ? emptyState("No customer started Connect in this window.") : null,
      h("div", { class: "grid-2" }, funnelSection(funnel), failuresSection(funnel)),
      timeseriesSection(series, win.bucket),
      institutionsSection(institutions.institutions || [], linkRange, gen));
  }

  function stat(label, value, testid) {
    return h("div", { class: "stat" }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value", testid }, value));
  }

  function headline(f, bucket) {
    const steps = f.steps || {};
    return h("section", { class: "card headline" },
      h("p", { class: "window-label muted", testid: "window-label" },
        [`${fmtTime(f.since)} → ${fmtTime(f.until)}`, `bucket ${bucket}`, programScopeText()].filter(Boolean).join(" · ")),
      h("div", { class: "stats" },
        stat("Customers in window", fmtCount(f.customers), "funnel-customers"),
        stat("Started", fmtCount(steps.started)),
        stat("Consent granted", fmtCount(steps.consent_granted)),
        stat("Conversion", fmtPercent(f.conversion), "conversion")));
  }

  function funnelSection(f) {
    const steps = f.steps || {};
    const rows = STEPS.map((step) => h("tr", {},
      h("th", { scope: "row" }, STEP_LABELS[step]),
      numCell(steps[step], `funnel-step-${step}`),
      h("td", { class: "num" }, pctOf(steps[step], steps.started))));
    return section("Funnel",
      funnelChart(steps),
      scrollTable(dataTable(["Step", { label: "Customers", num: true }, { label: "% of started", num: true }], rows)));
  }

  // Horizontal bars, one per step; lengths in percent so that text keeps its size at any width.
  function funnelChart(steps) {
    const rowH = 46;
    const started = steps.started;
    const scale = Math.max(1, ...STEPS.map((step) => Number(steps[step]) || 0));
    const chart = s("svg", {
      class: "chart funnel-chart", testid: "funnel-chart", width: "100%", height: STEPS.length * rowH,
      role: "img", "aria-label": "Funnel: customers per step",
    });
    STEPS.forEach((step, i) => {
      const n = Number(steps[step]) || 0;
      const y = i * rowH;
      chart.append(s("g", { class: "bar-row" },
        s("title", {}, `${STEP_LABELS[step]}: ${fmtCount(steps[step])} (${pctOf(steps[step], started)} of started)`),
        s("text", { x: 0, y: y + 15, class: "label" }, STEP_LABELS[step]),
        s("text", { x: "100%", y: y + 15, "text-anchor": "end", class: "value" }, `${fmtCount(steps[step])} · ${pctOf(steps[step], started)}`),
        s("rect", { x: 0, y: y + 22, width: "100%", height: 16, rx: 3, class: "track" }),
        s("rect", { x: 0, y: y + 22, width: `${(n / scale) * 100}%`, height: 16, rx: 3, class: `bar step-${i}` })));
    });
    return chart;
  }

  function failuresSection(f) {
    const failed = f.failed || {};
    const abandoned = f.abandoned || {};
    const failedBy = failed.by_reason || {};
    const abandonedBy = abandoned.by_reason || {};
    const group = (label) => h("tr", { class: "group" }, h("th", { scope: "rowgroup", colspan: 2 }, label));
    const row = (label, n, testid, cls) => h("tr", { class: cls }, h("th", { scope: "row" }, label), numCell(n, testid));
    return section("Failures and outcomes",
      scrollTable(h("table", { class: "data outcomes" },
        h("tbody", {},
          group("Failed"),
          // Every reason the API counts, in its order (a new reason shows up by itself).
          Object.keys(failedBy).map((r) => row(r, failedBy[r], `failed-${r}`, "reason")),
          row("Total failed", failed.total, "failed-total", "total"),
          group("Abandoned"),
          Object.keys(abandonedBy).map((r) => row(r, abandonedBy[r], `abandoned-${r}`, "reason")),
          row("Total abandoned", abandoned.total, "abandoned-total", "total"),
          group("Other"),
          row("In progress", f.in_progress, "in-progress"),
          row("Consent revoked", f.consent_revoked, "consent-revoked")))));
  }

  // 1, 2, 5 × 10^k at or above n
  function niceMax(n) {
    const pow = 10 ** Math.floor(Math.log10(Math.max(1, n)));
    for (const m of [1, 2, 5, 10]) if (m * pow >= n) return m * pow;
    return 10 * pow;
  }

  function bucketLabel(ts, bucket) {
    const t = String(ts || "");
    return bucket === "hour" ? `${t.slice(5, 10)} ${t.slice(11, 13)}h` : t.slice(5, 10);
  }

  function timeseriesSection(series, bucket) {
    const buckets = Array.isArray(series.buckets) ? series.buckets : [];
    return section(`Per ${series.bucket || bucket}`,
      timeseriesChart(buckets, series.bucket || bucket),
      h("div", { class: "legend" },
        h("span", { class: "key started" }, "started"),
        h("span", { class: "key granted" }, "consent granted")),
      // The API keeps at most 2,400 buckets: the last ones of a longer window.
      series.truncated
        ? h("p", { class: "notice", testid: "timeseries-truncated" },
          `Only the last ${buckets.length} ${series.bucket || bucket}s are shown, from ${fmtTime(series.since)}.`)
        : null);
  }

  // Paired bars per bucket (started, consent granted); x in percent, y in pixels.
  function timeseriesChart(buckets, bucket) {
    const height = 220;
    const top = 20;
    const bottom = 26;
    const plot = height - top - bottom;
    const chart = s("svg", {
      class: "chart timeseries-chart", testid: "timeseries-chart", width: "100%", height,
      role: "img", "aria-label": `Started and consent granted per ${bucket}`,
    });
    const value = (b, step) => Number(b && b.steps && b.steps[step]) || 0;
    const max = niceMax(Math.max(1, ...buckets.map((b) => Math.max(value(b, "started"), value(b, "consent_granted")))));
    const yOf = (v) => top + plot - (v / max) * plot;

    for (const v of [0, max / 2, max]) {
      chart.append(s("line", { x1: 0, x2: "100%", y1: yOf(v), y2: yOf(v), class: v === 0 ? "axis" : "grid" }));
      if (v > 0) chart.append(s("text", { x: 0, y: yOf(v) - 4, class: "tick" }, Number.isInteger(v) ? String(v) : v.toFixed(1)));
    }
    const n = buckets.length;
    if (n === 0) {
      chart.append(s("text", { x: "50%", y: top + plot / 2, "text-anchor": "middle", class: "tick" }, "No buckets"));
      return chart;
    }
    const slot = 100 / n;
    buckets.forEach((b, i) => {
      const started = value(b, "started");
      const granted = value(b, "consent_granted");
      chart.append(s("g", {},
        s("title", {}, `${fmtTime(b.start)}: started ${started}, consent granted ${granted}`),
        s("rect", { x: `${i * slot}%`, y: top, width: `${slot}%`, height: plot, class: "hit" }),
        s("rect", { x: `${(i + 0.1) * slot}%`, y: yOf(started), width: `${slot * 0.4}%`, height: plot - (yOf(started) - top), class: "bar started" }),
        s("rect", { x: `${(i + 0.5) * slot}%`, y: yOf(granted), width: `${slot * 0.4}%`, height: plot - (yOf(granted) - top), class: "bar granted" })));
    });
    const labelWidth = bucket === "hour" ? 90 : 60;
    const maxLabels = Math.max(2, Math.floor((Math.min(window.innerWidth, 1240) - 60) / labelWidth));
    const every = Math.max(1, Math.ceil(n / maxLabels));
    for (let i = 0; i < n; i += every) {
      const x = (i + 0.5) * slot;
      const anchor = x < 6 ? "start" : x > 94 ? "end" : "middle";
      chart.append(s("text", { x: anchor === "start" ? 0 : anchor === "end" ? "100%" : `${x}%`, y: height - 8, "text-anchor": anchor, class: "tick" },
        bucketLabel(buckets[i].start, bucket)));
    }
    return chart;
  }

  function institutionsSection(institutions, range, gen) {
    if (!institutions.length) return section("Institutions", h("p", { class: "muted" }, "No institution in this window."));
    // The failing customers are a customer list: without `read`, no links, and a note saying why.
    const canList = hasScope("read");
    const health = healthSlots();
    const healthNote = h("p", { class: "muted health-note", testid: "institution-health-note" });
    healthNote.hidden = true;
    const rows = institutions.map((inst) => institutionRow(inst, range, canList, health));
    // The table is shown at once; the statuses fill their column when they arrive.
    loadInstitutionsHealth(health, healthNote, gen);
    return section("Institutions",
      scrollTable(dataTable(["Institution", "Health",
        { label: "Customers", num: true }, { label: "Authenticated", num: true }, { label: "Consent granted", num: true },
        { label: "Failed", num: true }, { label: "Abandoned", num: true }, { label: "Conversion", num: true }, ""], rows)),
      healthNote,
      canList ? null : missingScope("read", "the list of failing customers"));
  }

  // The health column: a badge per institution evaluated; without an answer
  // (a route that failed, a token refused) the table stays as it is, with a note.
  async function loadInstitutionsHealth(health, note, gen) {
    let found;
    try {
      found = await institutionsHealth(health.ids());
    } catch (err) {
      if (!isLive(gen) || err.kind === "unauthorized") return;
      fill(note, `No health statuses: ${String(err.message).replace(/\.+$/, "")}.`);
      note.hidden = false;
      return;
    }
    if (isLive(gen)) health.show(found);
  }

  function institutionRow(inst, range, canList, health) {
    const failed = (inst.failed && inst.failed.total) || 0;
    const link = canList && failed > 0
      ? h("a", {
        href: `#/customers?${buildQuery({
          institution_id: inst.institution_id, authentication: "failed",
          first_event_since: range.since, first_event_until: range.until,
        })}`,
      }, "failing customers")
      : null;
    return h("tr", { testid: "institution-row", "data-institution-id": inst.institution_id },
      h("td", { class: "mono" }, orDash(inst.institution_id)),
      h("td", { class: "health-cell" }, health.slot(inst.institution_id, "institution-health", true)),
      numCell(inst.customers),
      numCell(inst.authenticated),
      numCell(inst.consent_granted),
      numCell(inst.failed && inst.failed.total),
      numCell(inst.abandoned && inst.abandoned.total),
      h("td", { class: "num" }, fmtPercent(inst.conversion)),
      h("td", {}, link));
  }

  // ---------------------------------------------------------------------------
  // Customers list: #/customers?<filters>
  // ---------------------------------------------------------------------------

  function customerFilters(query) {
    const params = parseQuery(query);
    const filters = {};
    for (const key of CUSTOMER_FILTERS) if (params[key]) filters[key] = params[key];
    return { filters, cursor: params.cursor || null };
  }

  function renderCustomers(query) {
    const gen = beginScreen("customers", "Customers");
    if (!hasScope("read")) {
      mount(h("div", { class: "screen" }, missingScope("read", "the customer list")));
      return;
    }
    const { filters, cursor } = customerFilters(query);
    const entries = Object.entries(filters);
    const scope = programScopeText();
    // Which program each customer belongs to, when the token sees more than one.
    const withProgram = visiblePrograms().length > 1;
    const table = dataTable(
      ["Customer", withProgram ? "Program" : null, "Consent", "Authentication", "Last event", "Updated"].filter(Boolean), []);
    const tbody = table.tBodies[0];
    const footer = h("div", { class: "more-row" });
    const tableBox = h("div", {}, scrollTable(table));
    mount(h("div", { class: "screen" },
      h("section", { class: "card" },
        h("h2", {}, "Customers"),
        h("p", { class: "filters" },
          entries.length
            ? [h("span", { class: "muted" }, "Filters: "), entries.map(([k, v]) => h("span", { class: "chip" }, `${k} = ${v}`)),
              " ", h("a", { href: "#/customers" }, "clear")]
            : h("span", { class: "muted" }, "All customers"),
          scope ? [" ", h("span", { class: "chip", testid: "customers-program" }, scope)] : null),
        tableBox,
        footer)));
    loadCustomersPage(filters, cursor, { tbody, tableBox, footer, withProgram }, gen);
  }

  async function loadCustomersPage(filters, cursor, view, gen) {
    fill(view.footer, loadingEl());
    let body;
    try {
      body = await api(`/v1/customers?${buildQuery({ ...filters, ...programFilter(), cursor })}`);
    } catch (err) {
      if (!isLive(gen)) return;
      fill(view.footer, err.handled ? "" : failureEl(err), cursor ? moreCustomersButton(filters, cursor, view, gen) : "");
      return;
    }
    if (!isLive(gen)) return;
    for (const c of Array.isArray(body.customers) ? body.customers : []) view.tbody.append(customerRow(c, view.withProgram));
    const next = body.next_cursor || null;
    if (!view.tbody.rows.length) fill(view.tableBox, emptyState("No customers match."));
    fill(view.footer, next ? moreCustomersButton(filters, next, view, gen) : "");
  }

  function moreCustomersButton(filters, cursor, view, gen) {
    return h("button", {
      type: "button", class: "secondary", testid: "customers-more",
      onclick: () => loadCustomersPage(filters, cursor, view, gen),
    }, "Load more");
  }

  function customerRow(c, withProgram) {
    const consent = c.consent || {};
    const auth = c.authentication || {};
    const last = c.last_event;
    const id = String(c.customer_id ?? "");
    return h("tr", { testid: "customer-row" },
      h("td", { class: "mono" }, h("a", { href: `#/customer/${encodeURIComponent(id)}` }, id)),
      withProgram ? h("td", { class: "mono" }, orDash(c.program_id)) : null,
      h("td", {}, badge(consent.state)),
      h("td", {}, badge(auth.state), auth.reason ? h("span", { class: "reason-inline" }, String(auth.reason)) : null),
      h("td", {}, last ? [h("span", { class: "mono" }, orDash(last.event_type)), h("br"), timeEl(last.occurred_at)] : "—"),
      h("td", { class: "time" }, timeEl(c.updated_at)));
  }

  // ---------------------------------------------------------------------------
  // Start
  // ---------------------------------------------------------------------------

  document.getElementById("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  route();
})();
