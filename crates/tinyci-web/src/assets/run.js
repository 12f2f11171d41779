// The run page's live log: appends each chunk the site sends over Server-Sent Events, keeps
// the view at the bottom while the reader is there, and shows status changes and the end.
// EventSource reconnects by itself after a dropped connection, sending the id of the last
// event it received (the log offset), so the site resumes exactly where the page left off.
(function () {
  "use strict";
  var log = document.getElementById("log");
  if (!log || log.dataset.live !== "1") { return; }
  var status = document.getElementById("status");
  var note = document.getElementById("follow");
  var source = new EventSource(log.dataset.events + "?from=" + encodeURIComponent(log.dataset.offset));
  function atBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 40; }
  function setStatus(text) {
    status.textContent = text;
    status.dataset.status = text.split(" ")[0];
  }
  source.addEventListener("chunk", function (e) {
    var follow = atBottom();
    // The site renders chunks as escaped HTML (ANSI colours become classes).
    log.insertAdjacentHTML("beforeend", e.data);
    log.dataset.offset = e.lastEventId;
    if (follow) { log.scrollTop = log.scrollHeight; }
    note.textContent = "Following the log as it is written.";
  });
  source.addEventListener("status", function (e) { setStatus(e.data); });
  source.addEventListener("artifacts", function (e) {
    document.getElementById("artifacts").innerHTML = e.data;
  });
  source.addEventListener("done", function (e) {
    source.close();
    setStatus(e.data);
    note.textContent = "The run ended: " + e.data + ".";
    var cancel = document.getElementById("cancel");
    if (cancel) { cancel.remove(); }
  });
  source.onerror = function () {
    if (source.readyState !== EventSource.CLOSED) {
      note.textContent = "Connection lost; reconnecting…";
    }
  };
}());
