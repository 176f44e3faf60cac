// EDIL explorer: live refresh. Polls the revision of the data; when it changes, fetches this
// view's main part (rendered and escaped on the server) and swaps it in. Nothing else runs here.
(function () {
  "use strict";
  var body = document.body;
  var url = body.getAttribute("data-revision-url");
  var revision = body.getAttribute("data-revision");
  var period = Math.max(500, Number(body.getAttribute("data-poll-ms")) || 2000);
  var live = document.getElementById("live");
  var main = document.getElementById("main");
  if (!url || !main) { return; }

  function mark(ok, text) {
    if (live) { live.textContent = text; live.className = ok ? "live ok" : "live err"; }
  }

  function tick() {
    fetch(url, { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (state) {
        var head = document.getElementById("head-block");
        if (head && state.head_block !== null && state.head_block !== undefined) { head.textContent = String(state.head_block); }
        if (state.revision === revision) { return null; }
        var next = state.revision;
        return fetch(window.location.pathname + "?fragment=1", { cache: "no-store", credentials: "same-origin" })
          .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
          .then(function (html) { main.innerHTML = html; revision = next; body.setAttribute("data-revision", next); });
      })
      .then(function () { mark(true, "live"); }, function () { mark(false, "disconnected"); })
      .then(function () { window.setTimeout(tick, period); });
  }
  window.setTimeout(tick, period);
})();
