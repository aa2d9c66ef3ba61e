// Settings » Mail Accounts: live progress bars and the "no security" warning.
// Without JavaScript the page shows the same numbers as of its last reload.
(function () {
  "use strict";

  var POLL_MS = 2000;

  function setField(root, name, value) {
    var el = root.querySelector('[data-pop-field="' + name + '"]');
    if (el) { el.textContent = String(value); }
  }

  function refresh(cell) {
    fetch(cell.getAttribute("data-progress-url"), {credentials: "same-origin",
                                                   headers: {"Accept": "application/json"}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (!data) { return; }
        var bar = cell.querySelector("progress");
        var total = data.messages + data.left;
        if (bar) {
          bar.max = Math.max(total, 1);
          bar.value = total ? data.messages : 1;
          bar.textContent = data.messages + " of " + total;
        }
        setField(cell, "messages", data.messages);
        setField(cell, "left", data.left);
        setField(cell, "on_server", data.on_server);
        setField(cell, "rate", data.rate);
        setField(cell, "eta", data.left ? (data.eta || "unknown") : "none");
        var row = cell.closest("tr");
        if (row) {
          setField(row, "last_error", data.last_error);
          var badge = row.querySelector('[data-pop-field="state"] .badge');
          if (badge) { badge.textContent = data.state_words; }
        }
      })
      .catch(function () { /* offline for a moment: try again at the next tick */ });
  }

  function startPolling() {
    var cells = document.querySelectorAll("[data-progress-url]");
    if (!cells.length) { return; }
    var tick = function () { cells.forEach(refresh); };
    tick();
    window.setInterval(tick, POLL_MS);
  }

  function securityWarning() {
    var select = document.getElementById("security");
    var warning = document.getElementById("security-none-warning");
    if (!select || !warning) { return; }
    var update = function () { warning.hidden = select.value !== "none"; };
    select.addEventListener("change", update);
    update();
  }

  document.addEventListener("DOMContentLoaded", function () {
    startPolling();
    securityWarning();
  });
}());
