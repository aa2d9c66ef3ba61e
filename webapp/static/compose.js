// Compose: draft autosave (every 10 s when something changed, and when leaving the page)
// and address suggestions from the CRM. No inline script: the CSP forbids it.
(function () {
  "use strict";
  var form = document.getElementById("compose-form");
  if (!form) { return; }
  var autosaveUrl = form.getAttribute("data-autosave-url");
  var autocompleteUrl = form.getAttribute("data-autocomplete-url");
  var status = document.getElementById("autosave-status");
  var INTERVAL_MS = 10000;
  var submitting = false;
  var saving = false;

  // What the draft holds: the form's fields, without the files (they are sent with Send or
  // Save draft only; re-uploading them every 10 seconds would be wasteful).
  function draftData() {
    var data = new FormData(form);
    data.delete("attachments");
    data.delete("send");
    data.delete("save_draft");
    return data;
  }

  function snapshot() {
    var parts = [];
    draftData().forEach(function (value, key) {
      if (key !== "csrf_token" && key !== "draft_id" && key !== "attachment_source") {
        parts.push(key + "=" + value);
      }
    });
    return parts.join("\u0000");
  }

  var saved = snapshot();

  function setStatus(text) { if (status) { status.textContent = text; } }

  function rebuildAttachments(list) {
    var box = document.getElementById("kept-attachments");
    var ul = document.getElementById("kept-attachment-list");
    if (!box || !ul) { return; }
    while (ul.firstChild) { ul.removeChild(ul.firstChild); }
    list.forEach(function (item) {
      var li = document.createElement("li");
      var label = document.createElement("label");
      var input = document.createElement("input");
      input.type = "checkbox";
      input.name = "keep_part";
      input.value = item.part_id;
      input.checked = true;
      var small = document.createElement("small");
      small.textContent = "(" + item.size + ")";
      label.appendChild(input);
      label.appendChild(document.createTextNode(" " + item.filename + " "));
      label.appendChild(small);
      li.appendChild(label);
      ul.appendChild(li);
    });
    box.hidden = list.length === 0;
  }

  function applySaved(result) {
    form.elements.draft_id.value = result.draft_id;
    form.elements.attachment_source.value = result.attachment_source;
    rebuildAttachments(result.attachments || []);
    var when = new Date().toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
    var note = result.problems && result.problems.length ? " (not kept: " + result.problems.join("; ") + ")" : "";
    setStatus("Draft saved at " + when + note);
  }

  function autosave() {
    if (submitting || saving) { return; }
    var current = snapshot();
    if (current === saved) { return; }
    saving = true;
    fetch(autosaveUrl, {method: "POST", body: draftData(), credentials: "same-origin",
                        headers: {"Accept": "application/json"}})
      .then(function (response) {
        return response.json().then(function (body) { return {ok: response.ok, body: body}; });
      })
      .then(function (result) {
        if (result.ok && result.body.ok) {
          saved = current;
          applySaved(result.body);
        } else {
          setStatus("Draft not saved: " + (result.body.error || "try again"));
        }
      })
      .catch(function () { setStatus("Draft not saved: no connection"); })
      .then(function () { saving = false; });
  }

  form.addEventListener("submit", function () { submitting = true; });
  window.setInterval(autosave, INTERVAL_MS);

  // Leaving the page: a beacon survives the unload where fetch would be cancelled.
  function leaving() {
    if (submitting || !navigator.sendBeacon) { return; }
    if (snapshot() !== saved) {
      if (navigator.sendBeacon(autosaveUrl, draftData())) { saved = snapshot(); }
    }
  }
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") { leaving(); }
  });
  window.addEventListener("pagehide", leaving);

  // Address suggestions: the last item typed in To/Cc/Bcc, matched against CRM contacts.
  if (!autocompleteUrl) { return; }
  var list = document.getElementById("address-suggestions");
  var timer = null;
  function suggest(input) {
    var text = input.value;
    var cut = text.lastIndexOf(",");
    var head = cut >= 0 ? text.slice(0, cut + 1) + " " : "";
    var query = text.slice(cut + 1).trim();
    if (query.length < 2) { return; }
    fetch(autocompleteUrl + "?q=" + encodeURIComponent(query), {credentials: "same-origin"})
      .then(function (response) { return response.ok ? response.json() : {results: []}; })
      .then(function (body) {
        while (list.firstChild) { list.removeChild(list.firstChild); }
        (body.results || []).forEach(function (item) {
          var option = document.createElement("option");
          var name = (item.name || "").replace(/["\\]/g, "");
          option.value = head + (name ? "\"" + name + "\" <" + item.email + ">" : item.email);
          option.label = item.kind ? item.kind + ": " + item.email : item.email;
          list.appendChild(option);
        });
      })
      .catch(function () { /* suggestions are a convenience; typing still works */ });
  }
  ["to", "cc", "bcc"].forEach(function (name) {
    var input = form.elements[name];
    if (!input) { return; }
    input.addEventListener("input", function () {
      window.clearTimeout(timer);
      timer = window.setTimeout(function () { suggest(input); }, 200);
    });
  });
})();
