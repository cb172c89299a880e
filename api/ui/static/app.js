/* Zhisuan dashboard: the page's one event stream, the polling fallback, the live log tail.
   The stream only names what changed; panels re-fetch their own HTML (htmx), so no data arrives here.
   No eval, no inline code, no HTML built from data: log text is added as text nodes. */
(function () {
  "use strict";
  var body = document.body;
  var streamUrl = body.getAttribute("data-stream");
  var live = document.getElementById("live");
  var EVENTS = ["jobs", "usage", "logs", "queues", "nodes"];
  var source = null;
  var failures = 0;
  var state = "connecting";
  var lastUpdate = Date.now();
  var pollTimer = null;

  function fire(name) {
    if (window.htmx) { window.htmx.trigger(body, "zs:" + name); }
    if (name === "logs") { tail(false); }
  }

  function label() {
    if (!live) { return; }
    var seconds = Math.round((Date.now() - lastUpdate) / 1000);
    var text = body.getAttribute("data-" + (state === "live" ? "live" : state === "polling" ? "polling" : "reconnecting")) || state;
    var unit = body.getAttribute("data-unit") || " s";
    var updated = (body.getAttribute("data-updated") || "{s}").replace("{s}", seconds + unit);
    live.textContent = text + " · " + updated;
    live.setAttribute("data-state", state);
  }

  function setState(next) { state = next; label(); }

  function startPolling() {
    if (pollTimer) { return; }
    setState("polling");
    pollTimer = setInterval(function () {
      if (document.visibilityState === "visible") { EVENTS.forEach(fire); }
    }, 10000);
  }

  function stopPolling() {
    if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  }

  function checkSession() {
    fetch("/ui/session?next=" + encodeURIComponent(location.pathname + location.search), { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (answer) { if (!answer.ok) { location.href = answer.login; } })
      .catch(function () { /* the server is away: keep polling, the indicator says so */ });
  }

  function connect() {
    if (!streamUrl || source || document.visibilityState === "hidden") { return; }
    source = new EventSource(streamUrl);
    source.onopen = function () { failures = 0; stopPolling(); setState("live"); };
    EVENTS.forEach(function (name) { source.addEventListener(name, function () { fire(name); }); });
    source.addEventListener("session", function () { disconnect(); checkSession(); });
    source.onerror = function () {
      if (source && source.readyState === EventSource.CLOSED) {
        disconnect();
        failures += 1;
        startPolling();
        checkSession();
        setTimeout(connect, Math.min(30000, 1000 * Math.pow(2, failures)));
      } else {
        setState("reconnecting");
        startPolling();
      }
    };
  }

  function disconnect() {
    if (source) { source.close(); source = null; }
  }

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") {
      disconnect();
      stopPolling();
    } else {
      connect();
      EVENTS.forEach(fire); // catch up on what changed while hidden
    }
  });
  body.addEventListener("htmx:afterSwap", function () { lastUpdate = Date.now(); label(); });
  setInterval(label, 5000);

  /* ---- live log tail ---- */
  var log = document.getElementById("log");
  var offset = 0;
  var busy = false;
  var complete = false;

  function logUrl(rank, attempt, from) {
    return "/ui/jobs/" + encodeURIComponent(log.getAttribute("data-job")) + "/logs.json?rank=" +
      encodeURIComponent(rank) + "&attempt=" + encodeURIComponent(attempt) + "&offset=" + from;
  }

  function tail(reset) {
    if (!log) { return; }
    var rank = document.getElementById("log-rank").value;
    var attempt = document.getElementById("log-attempt").value;
    var download = document.getElementById("log-download");
    if (reset) {
      offset = 0;
      complete = false;
      log.textContent = "";
      download.setAttribute("href", "/ui/jobs/" + encodeURIComponent(log.getAttribute("data-job")) +
        "/logs.txt?rank=" + encodeURIComponent(rank) + "&attempt=" + encodeURIComponent(attempt));
    }
    if (busy || complete) { return; }
    busy = true;
    var rounds = 0;
    function step() {
      fetch(logUrl(rank, attempt, offset), { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) {
          var type = r.headers.get("content-type") || "";
          if (!r.ok || type.indexOf("application/json") !== 0) { throw new Error("session"); }
          return r.json();
        })
        .then(function (chunk) {
          if (chunk.text) {
            log.appendChild(document.createTextNode(chunk.text));
            if (document.getElementById("log-follow").checked) { log.scrollTop = log.scrollHeight; }
          }
          log.setAttribute("data-offset", String(chunk.next_offset));
          var more = chunk.next_offset > offset;
          offset = chunk.next_offset;
          complete = chunk.complete;
          rounds += 1;
          if (!log.textContent) { log.setAttribute("data-state", "empty"); } else { log.removeAttribute("data-state"); }
          if (more && rounds < 50) { step(); } else { busy = false; }
        })
        .catch(function () { busy = false; checkSession(); });
    }
    step();
  }

  if (log) {
    document.getElementById("log-rank").addEventListener("change", function () { tail(true); });
    document.getElementById("log-attempt").addEventListener("change", function () { tail(true); });
    tail(true);
  }

  connect();
  label();
})();
