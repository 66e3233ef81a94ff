/* The item page: lease heartbeats, choosing values by keyboard or mouse, decisions, skip, undo, zoom, Grad-CAM. */
"use strict";

(() => {
  const data = Swatch.pageData();
  const id = data.listing_id;
  const base = "/api/items/" + encodeURIComponent(id);
  const filters = data.filters || {};
  const decisionId = Swatch.newId(); // once per page load: a double submit is answered, not applied twice
  const NOT_VISIBLE = "__NOT_VISIBLE__";

  const cards = Array.from(document.querySelectorAll("fieldset.attr"));
  const comment = document.getElementById("comment");
  const applyTo = document.getElementById("apply-to");
  let readOnly = Boolean(data.read_only);
  let current = 0;
  let busy = false;
  let leaving = false; // set when the page navigates on its own (the lease was handed on already)

  // -- choices ------------------------------------------------------------------------------------

  /** Per attribute: {action: CONFIRMED | CORRECTED | NOT_VISIBLE, values} or null (unanswered). */
  const choices = data.attributes.map((a) =>
    a.candidates.length ? { action: "CONFIRMED", values: [a.candidates[0]] } : null,
  );

  function actionFor(index, values) {
    const top = data.attributes[index].candidates[0];
    return values.length === 1 && values[0] === top ? "CONFIRMED" : "CORRECTED";
  }

  function choose(index, values) {
    if (readOnly) return;
    values = Array.from(new Set(values));
    if (!values.length) choices[index] = null;
    else choices[index] = { action: actionFor(index, values), values };
    render(index);
  }

  function notVisible(index) {
    if (readOnly) return;
    choices[index] = { action: "NOT_VISIBLE", values: [] };
    render(index);
  }

  /** Number key n: candidate n (toggled in for several-value attributes). */
  function pick(index, n) {
    const a = data.attributes[index];
    const value = a.candidates[n - 1];
    if (value === undefined) {
      Swatch.show(`${a.name} has ${a.candidates.length} candidate${a.candidates.length === 1 ? "" : "s"}, not ${n}`, "warn");
      return;
    }
    const chosen = choices[index];
    if (a.multi_label && chosen && chosen.action !== "NOT_VISIBLE") {
      const values = chosen.values.includes(value) ? chosen.values.filter((v) => v !== value) : [...chosen.values, value];
      choose(index, values);
    } else {
      choose(index, [value]);
    }
  }

  function render(index) {
    const card = cards[index];
    const chosen = choices[index];
    const values = chosen ? chosen.values : [];
    for (const button of card.querySelectorAll("button.cand")) {
      button.setAttribute("aria-pressed", String(values.includes(button.dataset.value)));
    }
    card.querySelector("button.not-visible").setAttribute("aria-pressed", String(Boolean(chosen && chosen.action === "NOT_VISIBLE")));
    const select = card.querySelector("select.value-select");
    for (const option of select.options) {
      option.selected = chosen ? (chosen.action === "NOT_VISIBLE" ? option.value === NOT_VISIBLE : values.includes(option.value)) : option.value === "";
    }
    const line = card.querySelector(".choice");
    card.classList.toggle("answered", Boolean(chosen));
    card.classList.toggle("corrected", Boolean(chosen && chosen.action === "CORRECTED"));
    if (!chosen) line.textContent = "→ not answered yet";
    else if (chosen.action === "NOT_VISIBLE") line.textContent = "→ not visible in the images";
    else line.textContent = `→ ${chosen.values.join(", ")} (${chosen.action === "CONFIRMED" ? "confirms the model" : "corrects the model"})`;
  }

  // -- focus ------------------------------------------------------------------------------------------

  function focusAttr(index) {
    if (!cards.length) return;
    current = Math.max(0, Math.min(cards.length - 1, index));
    cards.forEach((card, i) => card.classList.toggle("focused", i === current));
    cards[current].focus({ preventScroll: true });
    cards[current].scrollIntoView({ block: "nearest" });
    gradcam(current);
  }

  function cardOf(element) {
    const card = element && element.closest ? element.closest("fieldset.attr") : null;
    return card ? cards.indexOf(card) : -1;
  }

  // -- Grad-CAM -----------------------------------------------------------------------------------

  const gradcams = new Map();

  function gradcam(index) {
    const a = data.attributes[index];
    const body = document.getElementById("gradcam-body");
    document.getElementById("gradcam-attr").textContent = a.name;
    if (!gradcams.has(a.name)) {
      const url = `${base}/gradcam/${encodeURIComponent(a.name)}.png`;
      gradcams.set(
        a.name,
        fetch(url, { credentials: "same-origin" }).then(async (response) => {
          if (response.ok) return { src: URL.createObjectURL(await response.blob()) };
          let reason = response.statusText;
          try {
            reason = (await response.json()).error || reason;
          } catch (_) {
            /* not JSON */
          }
          return { error: reason, status: response.status };
        }, (err) => ({ error: err.message })),
      );
    }
    body.replaceChildren(placeholder("Computing the overlay…"));
    gradcams.get(a.name).then((result) => {
      if (!result.src) gradcams.delete(a.name); // asked again when the attribute gets focus again
      if (data.attributes[current].name !== a.name) return;
      if (result.src) {
        const img = document.createElement("img");
        img.src = result.src;
        img.alt = `Grad-CAM overlay for ${a.name}`;
        body.replaceChildren(img);
      } else {
        body.replaceChildren(placeholder(`No Grad-CAM overlay: ${result.error}`));
      }
    });
  }

  function placeholder(text) {
    const p = document.createElement("p");
    p.className = "placeholder";
    p.textContent = text;
    return p;
  }

  // -- images ---------------------------------------------------------------------------------------

  for (const figure of document.querySelectorAll("figure.zoomable")) {
    const img = figure.querySelector("img");
    const broken = () => {
      figure.classList.add("broken");
      figure.querySelector(".frame").replaceChildren(placeholder("The image could not be fetched."));
    };
    img.addEventListener("error", broken);
    if (img.complete && img.naturalWidth === 0) broken(); // failed before this script ran
    figure.addEventListener("click", () => figure.classList.toggle("zoomed"));
    figure.addEventListener("mousemove", (event) => {
      const rect = figure.getBoundingClientRect();
      const x = ((event.clientX - rect.left) / rect.width) * 100;
      const y = ((event.clientY - rect.top) / rect.height) * 100;
      img.style.transformOrigin = `${x}% ${y}%`;
    });
    figure.addEventListener("mouseleave", () => figure.classList.remove("zoomed"));
  }

  function toggleZoom() {
    const figure = document.querySelector("figure.zoomable:not(.broken)");
    if (figure) figure.classList.toggle("zoomed");
  }

  // -- the lease -----------------------------------------------------------------------------------

  function becomeReadOnly(text) {
    readOnly = true;
    document.querySelector(".item-grid").classList.add("read-only");
    document.getElementById("lease").textContent = text;
    Swatch.show(text, "warn");
  }

  async function heartbeat() {
    if (readOnly || leaving) return;
    try {
      await Swatch.api("POST", `${base}/heartbeat`, {});
    } catch (err) {
      if (err.code === "leased") becomeReadOnly(`Your lease ran out: ${err.message}. You see the item read-only.`);
      else if (err.code === "not_pending") becomeReadOnly("This item was decided or replaced by a newer version meanwhile.");
      else Swatch.show(`Could not renew the lease (${err.message}); retrying.`, "warn");
    }
  }

  if (!readOnly) window.setInterval(heartbeat, Math.max(1, data.ttl_s / 3) * 1000);
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) {
      leaving = false;
      heartbeat();
    }
  });
  window.addEventListener("pagehide", () => {
    if (!readOnly && !leaving && navigator.sendBeacon) navigator.sendBeacon(`${base}/release`);
  });

  // -- actions -------------------------------------------------------------------------------------

  async function act(work) {
    if (busy) return;
    busy = true;
    document.body.classList.add("busy");
    try {
      await work();
    } catch (err) {
      leaving = false;
      Swatch.showError(err);
    } finally {
      busy = false;
      document.body.classList.remove("busy");
    }
  }

  function extras() {
    const body = { decision_id: decisionId, version: data.version };
    const text = comment ? comment.value.trim() : "";
    if (text) body.comment = text;
    if (applyTo && applyTo.checked) body.apply_to = data.same_image;
    return body;
  }

  function decided(result) {
    const answers = (result.decisions || []).map((d) => `${d.name} ${d.action === "NOT_VISIBLE" ? "not visible" : "= " + d.values.join(", ")}`);
    const parts = [`Decided ${result.listing_id}` + (answers.length ? ` (${answers.join("; ")})` : "")];
    if (result.repeated) parts.push("(already decided: nothing sent twice)");
    if (result.published_to_search === false) parts.push(`— not published to search: ${result.stale_reason}`);
    const applied = result.applied_to || [];
    const refused = applied.filter((r) => r.status === "refused");
    if (applied.length) parts.push(`; applied to ${applied.length - refused.length} more listing(s) with the same image`);
    if (refused.length) parts.push(`, refused for ${refused.map((r) => `${r.listing_id} (${r.error})`).join(", ")}`);
    Swatch.flash(parts.join(" ") + ". Press u to undo.");
  }

  function submit() {
    if (readOnly) return Swatch.show(`${data.holder} holds this item: it is read-only for you.`, "warn");
    const missing = choices.findIndex((c) => c === null);
    if (missing >= 0) {
      focusAttr(missing);
      return Swatch.show(`Answer ${data.attributes[missing].name} first: pick a value or mark it not visible (n).`, "warn");
    }
    const attributes = data.attributes.map((a, i) => ({ name: a.name, action: choices[i].action, values: choices[i].values }));
    return act(async () => {
      const result = await Swatch.api("POST", `${base}/decision`, { ...extras(), attributes });
      leaving = true;
      decided(result);
      await Swatch.goNext(filters);
    });
  }

  function acceptAll() {
    if (readOnly) return Swatch.show(`${data.holder} holds this item: it is read-only for you.`, "warn");
    return act(async () => {
      const result = await Swatch.api("POST", `${base}/accept`, extras());
      leaving = true;
      decided(result);
      await Swatch.goNext(filters);
    });
  }

  function skip() {
    if (readOnly) return act(() => Swatch.goNext(filters));
    return act(async () => {
      await Swatch.api("POST", `${base}/skip`, {});
      leaving = true;
      Swatch.flash(`Skipped ${id}: it goes to someone else.`);
      await Swatch.goNext(filters);
    });
  }

  function undo() {
    return act(async () => {
      leaving = true;
      await Swatch.undo(filters);
    });
  }

  function toQueue() {
    return act(async () => {
      if (!readOnly) {
        await Swatch.api("POST", `${base}/release`, {}).catch(() => null);
        leaving = true;
      }
      window.location.assign(Swatch.queueUrl(filters));
    });
  }

  // -- wiring ---------------------------------------------------------------------------------------

  cards.forEach((card, index) => {
    render(index);
    card.addEventListener("focusin", () => {
      if (current !== index) {
        current = index;
        cards.forEach((c, i) => c.classList.toggle("focused", i === current));
        gradcam(index);
      }
    });
    for (const button of card.querySelectorAll("button.cand")) {
      button.addEventListener("click", () => {
        focusAttr(index);
        pick(index, data.attributes[index].candidates.indexOf(button.dataset.value) + 1);
      });
    }
    card.querySelector("button.not-visible").addEventListener("click", () => {
      focusAttr(index);
      notVisible(index);
    });
    const declared = card.querySelector("button.use-declared");
    if (declared) declared.addEventListener("click", () => choose(index, data.attributes[index].declared_values));
    const select = card.querySelector("select.value-select");
    select.addEventListener("change", () => {
      const picked = Array.from(select.selectedOptions, (o) => o.value).filter((v) => v !== "");
      if (picked.includes(NOT_VISIBLE)) notVisible(index);
      else choose(index, picked);
    });
  });

  document.getElementById("submit").addEventListener("click", submit);
  document.getElementById("accept").addEventListener("click", acceptAll);
  document.getElementById("skip").addEventListener("click", skip);
  document.getElementById("undo").addEventListener("click", undo);
  document.getElementById("to-queue").addEventListener("click", toQueue);
  const nextButton = document.getElementById("next-item");
  if (nextButton) nextButton.addEventListener("click", () => act(() => Swatch.goNext(filters)));

  document.addEventListener("keydown", (event) => {
    if (!Swatch.plainKey(event)) return;
    const target = event.target;
    const key = event.key;
    if (key === "Escape") {
      event.preventDefault();
      focusAttr(current);
      return;
    }
    if (Swatch.typing(target)) {
      if (key === "Enter" && target === comment) {
        event.preventDefault();
        submit();
      }
      return;
    }
    const inCard = cardOf(target);
    if (inCard >= 0) current = inCard;
    if (key === "Tab" && (inCard >= 0 || target === document.body)) {
      if (event.shiftKey && current === 0) return;
      event.preventDefault();
      if (!event.shiftKey && current === cards.length - 1 && comment) comment.focus();
      else focusAttr(current + (event.shiftKey ? -1 : 1));
      return;
    }
    if (target.tagName === "SELECT") {
      // the value list keeps its own keys (arrows, type-ahead); Enter still submits
      if (key === "Enter") {
        event.preventDefault();
        submit();
      }
      return;
    }
    if (key === "Enter") {
      if (["BUTTON", "A"].includes(target.tagName) || target.type === "checkbox") return;
      event.preventDefault();
      submit();
      return;
    }
    if (event.shiftKey && key.length !== 1) return;
    const handled = keys(key);
    if (handled) event.preventDefault();
  });

  function keys(key) {
    if (key === "j" || key === "ArrowDown") focusAttr(current + 1);
    else if (key === "k" || key === "ArrowUp") focusAttr(current - 1);
    else if (/^[1-9]$/.test(key) && cards.length && !readOnly) pick(current, Number(key));
    else if (key === "n" && cards.length && !readOnly) notVisible(current);
    else if (key === "d" && cards.length && !readOnly && data.attributes[current].declared_values.length) choose(current, data.attributes[current].declared_values);
    else if (key === "v" && cards.length) cards[current].querySelector("select.value-select").focus();
    else if (key === "a") acceptAll();
    else if (key === "s") skip();
    else if (key === "u") undo();
    else if (key === "q") toQueue();
    else if (key === "c" && comment) comment.focus();
    else if (key === "o" && applyTo) applyTo.checked = !applyTo.checked;
    else if (key === "z") toggleZoom();
    else return false;
    return true;
  }

  if (cards.length) focusAttr(0);
})();
