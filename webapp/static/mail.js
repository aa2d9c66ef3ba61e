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
})();
