// The execution page keeps itself up to date: it polls its live endpoint and
// replaces the status, timing and output in place, until the execution is finished.
(function () {
  "use strict";
  var root = document.getElementById("th-live");
  if (!root || root.dataset.terminal === "1") { return; }
  var url = root.dataset.url;
  var interval = 1000;

  function set(name, html, asHtml) {
    document.querySelectorAll('[data-live="' + name + '"]').forEach(function (el) {
      if (asHtml) { el.innerHTML = html; } else { el.textContent = html; }
    });
  }

  function apply(state) {
    set("badge", state.badge_html, true);  // built and escaped by the server
    set("duration", state.duration);
    set("heartbeat", state.heartbeat);
    set("exit", state.exit);
    set("stdout", state.stdout_html, true);  // escaped by the server
    set("stderr", state.stderr_html, true);
    Object.keys(state.fields).forEach(function (name) { set("f-" + name, state.fields[name]); });
    document.querySelectorAll("[data-live-tail]").forEach(function (el) { el.hidden = !state.tail_only; });
    document.querySelectorAll("[data-live-while-cancellable]").forEach(function (el) { el.hidden = !state.cancellable; });
    root.dataset.status = state.status;
    if (state.terminal) {
      root.dataset.terminal = "1";
      document.querySelectorAll("[data-live-when-finished]").forEach(function (el) { el.hidden = false; });
    }
    return state.terminal;
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(function (state) { if (!apply(state)) { window.setTimeout(poll, interval); } })
      .catch(function () { window.setTimeout(poll, interval * 5); });  // the server is busy or restarting
  }
  window.setTimeout(poll, interval);
})();
