/* A listing that is not pending any more: go on to the next item, back to the queue, or undo. */
"use strict";

(() => {
  const data = Swatch.pageData();
  const next = () => Swatch.goNext(data.filters).catch(Swatch.showError);
  const undo = () => Swatch.undo(data.filters).catch(Swatch.showError);
  document.getElementById("next-item").addEventListener("click", next);
  document.getElementById("undo").addEventListener("click", undo);
  document.addEventListener("keydown", (event) => {
    if (!Swatch.plainKey(event) || Swatch.typing(event.target)) return;
    if (event.key === "Enter" && !["BUTTON", "A"].includes(event.target.tagName)) {
      event.preventDefault();
      next();
    } else if (event.key === "u") {
      event.preventDefault();
      undo();
    } else if (event.key === "q") {
      event.preventDefault();
      window.location.assign(Swatch.queueUrl(data.filters));
    }
  });
})();
