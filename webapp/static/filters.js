// Settings » Filters: show only the inputs a row needs, and follow an apply run's progress.
// Everything works without this script (all inputs shown; the run page reloads itself).
(function () {
  "use strict";

  function toggle(row, selector, show) {
    var box = row.querySelector(selector);
    if (box) { box.classList.toggle("is-hidden", !show); }
  }

  function refreshRow(row) {
    var field = row.querySelector(".filter-field select");
    if (field) { toggle(row, ".filter-header", field.value === "header"); }
    var kind = row.querySelector(".filter-kind select");
    if (kind) {
      toggle(row, ".filter-folder", kind.value === "move");
      toggle(row, ".filter-argument", kind.value === "label" || kind.value === "forward");
    }
  }

  document.querySelectorAll(".filter-row").forEach(function (row) {
    refreshRow(row);
    row.addEventListener("change", function () { refreshRow(row); });
  });

  var run = document.getElementById("filter-run");
  if (!run) { return; }
  var bar = document.getElementById("run-progress");
  var status = document.getElementById("run-status");
  function poll() {
    fetch(run.dataset.statusUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.json(); })
      .then(function (data) {
        bar.max = data.total || 1;
        bar.value = data.total ? data.done : (data.state === "done" ? 1 : 0);
        bar.textContent = data.done + " / " + data.total;
        if (data.state === "queued") {
          status.textContent = "Waiting for the worker…";
        } else if (data.state === "running") {
          status.textContent = "Looked at " + data.done + " of " + data.total + " messages.";
        } else if (data.state === "done") {
          status.textContent = "Done: the filter acted on " + data.matched + " message" + (data.matched === 1 ? "" : "s") + ".";
        } else {
          status.textContent = "Stopped: " + data.error;
        }
        run.dataset.state = data.state;
        if (data.state === "queued" || data.state === "running") { window.setTimeout(poll, 1500); }
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  if (run.dataset.state === "queued" || run.dataset.state === "running") { window.setTimeout(poll, 1000); }
})();
