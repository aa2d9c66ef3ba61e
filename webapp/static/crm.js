// CRM: show only the fields of the chosen activity kind (tasks: due date and status;
// events: start and end). Without JavaScript every field stays visible and still works.
(function () {
  "use strict";
  var FIELDS = { task: ["due_date", "status"], event: ["starts_at", "ends_at"], note: [] };
  var KIND_SPECIFIC = ["due_date", "status", "starts_at", "ends_at"];

  function fieldBox(form, name) {
    var input = form.querySelector("[name='" + name + "']");
    return input ? input.closest(".field") : null;
  }

  function update(form) {
    var select = form.querySelector("select[name='kind']");
    if (!select) return;
    var wanted = FIELDS[select.value] || [];
    KIND_SPECIFIC.forEach(function (name) {
      var box = fieldBox(form, name);
      if (box) box.classList.toggle("crm-hidden", wanted.indexOf(name) < 0);
    });
  }

  function init() {
    document.querySelectorAll(".crm-activity-form form, form.crm-activity-form").forEach(function (form) {
      var select = form.querySelector("select[name='kind']");
      if (!select) return;
      select.addEventListener("change", function () { update(form); });
      update(form);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
