/* The queue page's keys: r starts reviewing, b opens the bulk grid, u undoes, / jumps to the filters. */
"use strict";

(() => {
  const data = Swatch.pageData();
  document.addEventListener("keydown", (event) => {
    if (!Swatch.plainKey(event) || Swatch.typing(event.target) || event.target.tagName === "SELECT") return;
    if (event.key === "r") {
      event.preventDefault();
      document.getElementById("start-form").requestSubmit();
    } else if (event.key === "b") {
      event.preventDefault();
      const { attribute, group } = data.filters || {};
      window.location.assign("/bulk" + Swatch.query({ attribute, group }));
    } else if (event.key === "u") {
      event.preventDefault();
      Swatch.undo(data.filters).catch(Swatch.showError);
    } else if (event.key === "/") {
      event.preventDefault();
      document.querySelector("#filters select, #filters input").focus();
    }
  });
})();
