// Romancy dashboard: auto-refresh of the page's live part. Everything else is plain
// HTML (forms, links, <details>), so the pages work without this script.
(function () {
  "use strict";
  var PERIOD_MS = 5000;
  var KEY = "romancy-dashboard-refresh";
  var box = document.getElementById("auto-refresh");
  if (!box || !document.body.hasAttribute("data-refresh")) {
    return;
  }
  try {
    box.checked = window.localStorage.getItem(KEY) !== "off";
  } catch (e) { /* storage refused: keep the default */ }
  box.addEventListener("change", function () {
    try {
      window.localStorage.setItem(KEY, box.checked ? "on" : "off");
    } catch (e) { /* nothing to remember it in */ }
  });

  function openDetails(region) {
    var open = [];
    region.querySelectorAll("details").forEach(function (d, i) {
      if (d.open) { open.push(i); }
    });
    return open;
  }

  function refresh() {
    if (!box.checked || document.hidden) {
      return;
    }
    var current = document.getElementById("live");
    var focused = document.activeElement;
    if (!current || (focused && focused.closest && focused.closest("#live form"))) {
      return;  // someone is filling in a form in it: leave it alone
    }
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (text) {
        if (text === null) {
          return;
        }
        var fresh = new DOMParser().parseFromString(text, "text/html");
        var region = fresh.getElementById("live");
        if (!region) {
          return;
        }
        var open = openDetails(current);
        var details = region.querySelectorAll("details");
        open.forEach(function (i) { if (details[i]) { details[i].open = true; } });
        current.replaceWith(document.importNode(region, true));
        var stamp = document.getElementById("refreshed-at");
        if (stamp) {
          stamp.textContent = "updated " + new Date().toLocaleTimeString();
        }
        if (!fresh.body.hasAttribute("data-refresh")) {
          box.checked = false;  // it ended: nothing more will change
          box.disabled = true;
        }
      })
      .catch(function () { /* offline for a moment: try again next time */ });
  }

  window.setInterval(refresh, PERIOD_MS);
})();
