// Progressive enhancement only: every page works without this file.
// 1. Times: <time datetime="...Z"> rendered in UTC are shown in the viewer's time zone.
// 2. Live state: an element with data-live="/url" is re-fetched when the server
//    streams a sidecar event (LISTEN/NOTIFY behind /live).
(function () {
  "use strict";
  var fmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

  function localize(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) return;
      if (!el.title) el.title = el.textContent;
      el.textContent = fmt.format(d);
    });
  }

  function start() {
    localize(document);
    var note = document.getElementById("tz-note");
    if (note) note.textContent = "Times are in your time zone (" + Intl.DateTimeFormat().resolvedOptions().timeZone + ").";
    var live = document.querySelector("[data-live]");
    if (!live || !window.EventSource || !window.fetch) return;
    var source = new EventSource("/live");
    function refresh() {
      // Leave the part alone while it holds something typed (a reason, or one given back after
      // a sign-in): the page is fetched again once the form is sent.
      var typed = Array.prototype.some.call(live.querySelectorAll("input:not([type=hidden])"),
                                            function (el) { return el.value; });
      if (typed) return;
      fetch(live.getAttribute("data-live"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { if (!r.ok || r.redirected) throw new Error(r.status); return r.text(); })
        .then(function (html) {
          live.innerHTML = html;
          localize(live);
          live.setAttribute("data-updated", String(Date.now()));
        })
        .catch(function () { /* the page still works: reload shows the state */ });
    }
    source.addEventListener("sidecar", refresh);
    source.addEventListener("signedout", function () { source.close(); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
