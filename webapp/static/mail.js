// Webmail niceties; every page works without them (no inline scripts: the CSP forbids them).
(function () {
  "use strict";

  // "All" checkbox of a message list: checks or clears every row of its form.
  document.querySelectorAll("input[data-select-all]").forEach(function (all) {
    var form = all.form;
    if (!form) { return; }
    var boxes = function () { return form.querySelectorAll('input[type="checkbox"][name="ids"]'); };
    all.disabled = false;
    all.addEventListener("change", function () {
      boxes().forEach(function (box) { box.checked = all.checked; });
    });
    form.addEventListener("change", function (event) {
      if (event.target === all) { return; }
      var list = Array.prototype.slice.call(boxes());
      all.checked = list.length > 0 && list.every(function (box) { return box.checked; });
    });
  });

  // Buttons that destroy for good ask first (the server also keeps Empty Trash behind a page).
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-confirm]");
    if (button && !window.confirm(button.getAttribute("data-confirm"))) {
      event.preventDefault();
    }
  });

  // Keyboard: "/" goes to the search box; "j" / "k" move to the next / previous message of a
  // list (Enter opens it, Space on its checkbox selects it). Never while typing in a field.
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey ||
        (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName)))) {
      return;
    }
    if (event.key === "/") {
      var search = document.getElementById("mail-search-q");
      if (search) { event.preventDefault(); search.focus(); }
      return;
    }
    if (event.key !== "j" && event.key !== "k") { return; }
    var links = Array.prototype.slice.call(document.querySelectorAll(".message-list td.subject a"));
    if (!links.length) { return; }
    var index = links.indexOf(document.activeElement);
    var next = event.key === "j" ? Math.min(index + 1, links.length - 1) : Math.max(index - 1, 0);
    event.preventDefault();
    links[next].focus();
  });
})();
