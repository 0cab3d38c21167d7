// herald console: progressive enhancement only. Every page works without this script.
(function () {
  "use strict";

  // Overview: refresh the numbers and charts in place.
  var overview = document.getElementById("overview");
  if (overview && overview.dataset.refresh) {
    var every = Number(overview.dataset.every || 15) * 1000;
    setInterval(function () {
      if (document.hidden) return;
      fetch(overview.dataset.refresh, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) { overview.innerHTML = html; overview.dataset.refreshed = String(Date.now()); })
        .catch(function () { /* keep what is shown; the next tick tries again */ });
    }, every);
  }

  // Forms that ask first (cancel).
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (e) {
      if (!window.confirm(form.dataset.confirm)) e.preventDefault();
    });
  });

  // Dead letters: select all, and say how many a selection replays.
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll('input[name="ids"]').forEach(function (box) { box.checked = all.checked; });
    });
  }
  var selected = document.getElementById("replay-selected");
  if (selected) {
    selected.addEventListener("click", function (e) {
      var n = document.querySelectorAll('input[name="ids"]:checked').length;
      if (n === 0) { e.preventDefault(); window.alert("Select dead letters first."); return; }
      if (!window.confirm("Replay " + n + " dead letter" + (n === 1 ? "" : "s") + "?")) e.preventDefault();
    });
  }

  // Templates: live preview as the author types (the Preview button does the same without script).
  var form = document.getElementById("template-form");
  var target = document.getElementById("preview");
  if (form && target && form.dataset.preview) {
    var timer = null;
    var run = function () {
      var body = new URLSearchParams(new FormData(form));
      body.set("fragment", "1");
      fetch(form.dataset.preview, {
        method: "POST", credentials: "same-origin", body: body,
        headers: { "Content-Type": "application/x-www-form-urlencoded" }
      })
        .then(function (r) { return r.text(); })
        .then(function (html) { target.innerHTML = html; target.dataset.updated = String(Date.now()); })
        .catch(function () {});
    };
    form.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(run, 300); });
    document.getElementById("preview-button").addEventListener("click", function (e) { e.preventDefault(); run(); });
  }
})();
