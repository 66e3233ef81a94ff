/* Swatch review: what every page shares (API calls, messages, navigation). No framework, no build step. */
"use strict";

const Swatch = (() => {
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function pageData() {
    const el = document.getElementById("page-data");
    return el ? JSON.parse(el.textContent) : {};
  }

  /** Show one message (text only: never HTML) in the page's message area, replacing what it showed. */
  function show(text, kind = "error", append = false) {
    const box = document.getElementById("messages");
    if (!box) return;
    const p = document.createElement("p");
    p.className = "msg " + kind;
    p.textContent = text;
    if (kind === "error") p.setAttribute("role", "alert");
    if (append) box.append(p);
    else box.replaceChildren(p);
  }

  function clear() {
    const box = document.getElementById("messages");
    if (box) box.replaceChildren();
  }

  function showError(err) {
    if (err instanceof ApiError) show(`${err.message} (${err.code})`, "error");
    else show(String(err && err.message ? err.message : err), "error");
  }

  /** A JSON API call; resolves to the decoded body, rejects with an ApiError carrying {error, code}. */
  async function api(method, path, body) {
    const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "network", "the review service did not answer: " + err.message);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const code = (data && data.code) || "http_" + response.status;
      const message = (data && data.error) || response.statusText || "request failed";
      throw new ApiError(response.status, code, message);
    }
    return data;
  }

  /** A fresh id for one decision (generated once per page load, so a repeated submit is answered, not applied twice). */
  function newId() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
    const bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function query(values) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(values || {})) {
      if (v !== null && v !== undefined && v !== "") params.set(k, v);
    }
    const text = params.toString();
    return text ? "?" + text : "";
  }

  function itemUrl(listingId, filters) {
    return "/items/" + encodeURIComponent(listingId) + query(filters);
  }

  function queueUrl(filters, extra) {
    return "/" + query(Object.assign({}, filters || {}, extra || {}));
  }

  /** A message for the next page (decided, skipped, undone). */
  function flash(text, kind = "info") {
    try {
      sessionStorage.setItem("swatch-flash", JSON.stringify({ text, kind }));
    } catch (_) {
      /* private mode: no flash */
    }
  }

  function showFlash() {
    try {
      const raw = sessionStorage.getItem("swatch-flash");
      if (!raw) return;
      sessionStorage.removeItem("swatch-flash");
      const { text, kind } = JSON.parse(raw);
      show(text, kind, true); // beside what the server put there (say, "nothing left")
    } catch (_) {
      /* nothing to show */
    }
  }

  /** Claim the next item with these filters and open it; back to the queue when none is left. */
  async function goNext(filters) {
    try {
      const claimed = await api("POST", "/api/next", filters || {});
      window.location.assign(itemUrl(claimed.listing_id, filters));
    } catch (err) {
      if (err.code === "queue_empty") window.location.assign(queueUrl(filters, { done: "empty" }));
      else throw err;
    }
  }

  /** Withdraw my last decision and open that listing again (it is back in the queue, leased to me). */
  async function undo(filters) {
    const result = await api("POST", "/api/undo", {});
    flash(`Undid the decision on ${result.listing_id}` + (result.search_restored ? "; search shows the model's values again." : "."));
    window.location.assign(itemUrl(result.listing_id, filters));
  }

  /** Whether a key press belongs to a text field (then the page's shortcuts stay out of the way). */
  function typing(target) {
    if (!target) return false;
    if (target.isContentEditable || target.tagName === "TEXTAREA") return true;
    return target.tagName === "INPUT" && !["checkbox", "radio", "button", "submit", "reset"].includes(target.type);
  }

  function plainKey(event) {
    return !event.ctrlKey && !event.metaKey && !event.altKey;
  }

  document.addEventListener("DOMContentLoaded", showFlash);

  return { ApiError, api, pageData, show, clear, showError, newId, query, itemUrl, queueUrl, flash, goNext, undo, typing, plainKey };
})();
