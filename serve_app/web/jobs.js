// Following a job of the service's (POST /v1/jobs) to its end: its events stream
// (GET /v1/jobs/{id}/events, read with fetch(), not EventSource: EventSource cannot send
// the Authorization header the API key needs), or asking for the job every second when the
// stream breaks; the state line's text ("Running 45% · about 3 s left"); and the clock that
// counts those lines on while anything is followed. Used by app.js (a card's job) and the
// recent jobs list (recent.js). Sets animeganPage.jobs.
"use strict";

(() => {
  const page = (window.animeganPage ??= {});
  const { withKey, bearer, errorText } = page.api;
  const JOB_POLL_MS = 1000; // how often to ask for a job when its events stream broke
  const JOB_POLL_FAILURES = 30; // unanswered asks in a row before giving up on a job
  const TERMINAL = new Set(["done", "failed", "cancelled"]);

  // --- the clock ---------------------------------------------------------------------
  // The state lines' clock: runs while a source is busy (a card's job runs, a listed job
  // is followed); each tick gives every source the time. source: {busy(), tick(now)}.
  const sources = [];
  let ticker = null;

  function syncClock() {
    const busy = sources.some((source) => source.busy());
    if (busy && !ticker) ticker = setInterval(tick, 100);
    if (!busy && ticker) ticker = clearInterval(ticker);
  }

  function tick() {
    const now = performance.now();
    for (const source of sources) source.tick(now);
  }

  // --- following ---------------------------------------------------------------------

  // "Running 45% · about 3 s left" ("Running 45% · frame 9 of 20 · about 3 s left" for a
  // video or an animation): the ETA counts down from the last event.
  function jobText(job, now) {
    const { record } = job;
    const percent = Math.round(100 * (record.progress || 0));
    let text = `${record.state === "running" ? "Running" : "Queued"} ${percent}%`;
    // A still's frames are its tiles, if anything: only a moving picture's are worth saying.
    const moving = record.kind ? record.kind !== "still" : job.video || job.animated;
    if (moving && record.frames_total) {
      text += ` · frame ${record.frames_done ?? 0} of ${record.frames_total}`;
    }
    if (record.eta_s != null) {
      const left = Math.max(1, Math.ceil(record.eta_s - (now - job.recordAt) / 1000));
      text += ` · about ${duration(left)} left`;
    }
    return text;
  }

  function duration(s) {
    return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
  }

  // Follows the job to its final state (or until `signal` aborts); returns its last record
  // and gives each one heard of to onRecord. A job the service no longer knows (404:
  // expired) throws an error marked `gone`.
  async function follow(record, signal, onRecord) {
    const heard = (latest) => {
      record = latest;
      onRecord(latest);
    };
    try {
      await readEvents(record, signal, heard);
    } catch (error) {
      if (error.gone) throw error;
      // the stream broke (or was never there): ask for the job instead, below
    }
    let failures = 0;
    while (!TERMINAL.has(record.state) && !signal.aborted) {
      await pause(JOB_POLL_MS, signal);
      if (signal.aborted) break;
      let response;
      try {
        response = await withKey((key) => fetch(`/v1/jobs/${encodeURIComponent(record.id)}`, {
          headers: { Accept: "application/json", ...bearer(key) }, cache: "no-store", signal,
        }));
      } catch (error) {
        if (signal.aborted) break;
        if (++failures >= JOB_POLL_FAILURES) throw new Error(`Lost the job: ${error.message}`);
        continue;
      }
      if (response.status === 404) throw await goneError(response);
      if (!response.ok) {
        const message = await errorText(await response.blob(), response.status);
        if (++failures >= JOB_POLL_FAILURES) throw new Error(`Lost the job: ${message}`);
        continue;
      }
      failures = 0;
      heard(await response.json());
    }
    return record;
  }

  async function goneError(response) {
    const message = await errorText(await response.blob(), response.status);
    return Object.assign(new Error(message), { gone: true });
  }

  // GET /v1/jobs/{id}/events as a stream of Server-Sent Events: `event:` and `data:`
  // lines, a blank line ending each event; lines starting with ":" are comments (the
  // keep-alives). Each event's job goes to onRecord; returns when the stream ends, throws
  // if it breaks.
  async function readEvents(record, signal, onRecord) {
    const response = await withKey((key) =>
      fetch(`/v1/jobs/${encodeURIComponent(record.id)}/events`, {
        headers: { Accept: "text/event-stream", ...bearer(key) }, cache: "no-store", signal,
      }));
    if (response.status === 404) throw await goneError(response);
    if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let data = [];
    const dispatch = () => {
      if (!data.length) return;
      const parsed = JSON.parse(data.join("\n"));
      data = [];
      onRecord(parsed);
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        const lines = buffer.split("\n");
        buffer = lines.pop(); // an unfinished line waits for the next chunk
        for (let line of lines) {
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") dispatch();
          else if (line.startsWith(":")) continue;
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          // "event:" names the state, which the data carries too; other fields: unused
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
    dispatch(); // a last event without its blank line
  }

  // ms, or less once the signal aborts; its listener goes with it (one a second piled up
  // on a job's signal while the page polled).
  function pause(ms, signal) {
    return new Promise((resolve) => {
      const aborted = () => { clearTimeout(timer); resolve(); };
      const timer = setTimeout(() => { signal.removeEventListener("abort", aborted); resolve(); }, ms);
      signal.addEventListener("abort", aborted, { once: true });
    });
  }

  page.jobs = {
    TERMINAL, follow, jobText,
    clock: { add: (source) => sources.push(source), sync: syncClock },
  };
})();
