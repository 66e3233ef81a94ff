/* The bulk grid: accept the checked items' top candidates in one request; each card shows its answer. */
"use strict";

(() => {
  const data = Swatch.pageData();
  const boxes = Array.from(document.querySelectorAll("input.pick-box"));
  const button = document.getElementById("bulk-accept");
  const toggle = document.getElementById("toggle-all");
  const ids = data.items.map(() => Swatch.newId()); // one decision id per item per page load
  let busy = false;

  function count() {
    const n = boxes.filter((b) => b.checked && !b.disabled).length;
    document.getElementById("checked-count").textContent = String(n);
    button.disabled = n === 0 || busy;
    toggle.checked = n > 0 && n === boxes.filter((b) => !b.disabled).length;
  }

  async function accept() {
    const picked = boxes.filter((b) => b.checked && !b.disabled).map((b) => Number(b.dataset.index));
    if (!picked.length || busy) return;
    busy = true;
    count();
    const items = picked.map((i) => ({ listing_id: data.items[i].listing_id, version: data.items[i].version, decision_id: ids[i] }));
    try {
      const { results } = await Swatch.api("POST", "/api/bulk/accept", { items });
      let accepted = 0;
      results.forEach((result, n) => {
        const index = picked[n];
        const card = document.querySelector(`li.card[data-index="${index}"]`);
        const line = card.querySelector(".result");
        if (result.status === "decided") {
          accepted += 1;
          card.classList.add("done");
          boxes[index].checked = false;
          boxes[index].disabled = true;
          line.textContent = result.repeated ? "accepted (already)" : "accepted";
          if (result.published_to_search === false) line.textContent += ` — not published to search: ${result.stale_reason}`;
        } else {
          card.classList.add("refused");
          line.textContent = `refused: ${result.error} (${result.code})`;
        }
      });
      const refused = results.length - accepted;
      Swatch.show(`Accepted ${accepted} item${accepted === 1 ? "" : "s"}` + (refused ? `, ${refused} refused (see the cards).` : "."), refused ? "warn" : "info");
    } catch (err) {
      Swatch.showError(err);
    } finally {
      busy = false;
      count();
    }
  }

  boxes.forEach((box) => box.addEventListener("change", count));
  toggle.addEventListener("change", () => {
    boxes.forEach((b) => {
      if (!b.disabled) b.checked = toggle.checked;
    });
    count();
  });
  button.addEventListener("click", accept);
  document.addEventListener("keydown", (event) => {
    if (!Swatch.plainKey(event) || Swatch.typing(event.target)) return;
    if (event.key === "a") {
      event.preventDefault();
      accept();
    } else if (event.key === "x") {
      event.preventDefault();
      toggle.checked = !toggle.checked;
      toggle.dispatchEvent(new Event("change"));
    } else if (event.key === "q") {
      event.preventDefault();
      window.location.assign(Swatch.queueUrl(data.filters));
    }
  });
  if (boxes.length) count();
})();
