// pveguard dashboard: live updates over server-sent events, no build step.
// On a change event the page fetches itself again and swaps the regions marked data-live
// (same ids), so what you see is always what the server renders; a region that holds the
// keyboard focus is left alone until the focus moves on.
(function () {
  "use strict";
  var state = document.getElementById("live-state");
  var pending = null;
  var busy = false;
  var again = false;

  function say(text, cls) {
    if (!state) return;
    state.textContent = text;
    state.className = "live " + (cls || "");
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) {
        if (r.redirected && r.url.indexOf("/login") >= 0) { location.href = r.url; return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (el) {
          var fresh = doc.getElementById(el.id);
          if (!fresh || el.contains(document.activeElement)) return;
          if (el.innerHTML !== fresh.innerHTML) el.innerHTML = fresh.innerHTML;
        });
        document.body.dataset.refreshed = String(Date.now());
      })
      .catch(function () { /* the stream's error handler reports the connection */ })
      .then(function () {
        busy = false;
        if (again) { again = false; schedule(); }
      });
  }

  function schedule() {
    if (pending) return;
    pending = setTimeout(function () { pending = null; refresh(); }, 250);
  }

  if (!window.EventSource) { say("live updates unavailable", "off"); return; }
  var es = new EventSource("/api/v1/events");
  es.onopen = function () { say("live", "on"); };
  es.onerror = function () { say("reconnecting…", "off"); };
  // which events change what this page shows (the template says so in <body data-live-events>)
  var kinds = (document.body.dataset.liveEvents || "status").split(/\s+/);
  ["status", "stale", "alert", "ledger", "job", "recover"].forEach(function (kind) {
    es.addEventListener(kind, function (ev) {
      if (kind === "stale") say("PVE unreachable", "off");
      else if (kind === "status") say("live", "on");
      // a page showing the "PVE unreachable" banner wants the next status event to clear it
      if (kinds.indexOf(kind) >= 0 || (kind === "status" && document.querySelector("#banner .banner"))) schedule();
    });
  });
  window.addEventListener("beforeunload", function () { es.close(); });
})();
