// The result cards, one per upload: the card made from #result-template (the original,
// Again and Cancel), its state line, and its end: the result shown with its details,
// download and share links (and kept in the history: history.js), the error, or
// "Cancelled". What runs the upload or the job is app.js. Sets animeganPage.cards, and
// animeganPage.shownResults (the results "Download all" zips besides the history).
"use strict";

(() => {
  const page = (window.animeganPage ??= {});
  const { $, announce, badge, mediaType, EXTENSIONS, RANDOM_BADGE } = page.util;
  const ui = {
    results: $("#results"),
    template: $("#result-template"),
  };
  // Some systems give no media type (or a vague one) to .mkv or .mov files: the name decides.
  const VIDEO_NAME = /\.(mp4|m4v|mov|mkv|webm)$/i;
  // The page's own states while a job runs: Cancel is offered, "Again" is not.
  const JOB_ACTIVE = new Set(["uploading", "submitting", "submitted", "running", "waiting"]);
  const finished = new Set(); // jobs whose card shows a result (job.result)

  // A video by its media type or, where the system gave it none that says so, its name.
  // Whether a picture is animated is known only from its bytes: see animated().
  const isVideo = (file) => file.type.startsWith("video/") || VIDEO_NAME.test(file.name);

  function createJob(file, { onAgain, onCancel }) {
    const card = ui.template.content.firstElementChild.cloneNode(true);
    const job = { file, card, video: isVideo(file) };
    $(".name", card).textContent = file.name;
    // The "before" is the picture itself, or the video (its first frame until played).
    const before = $(job.video ? "video.before" : "img.before", card);
    const shape = (width, height) => {
      // the after picture and its placeholder take the original's shape
      if (width && height) card.style.setProperty("--ratio", `${width} / ${height}`);
    };
    if (job.video) {
      $("img.before", card).hidden = true;
      before.hidden = false;
      before.setAttribute("aria-label", `Original: ${file.name}`);
      before.addEventListener("loadedmetadata", () => shape(before.videoWidth, before.videoHeight));
    } else {
      before.alt = `Original: ${file.name}`;
      before.addEventListener("load", () => shape(before.naturalWidth, before.naturalHeight));
    }
    // Not something this browser shows (a text file, a codec it lacks): no preview.
    before.addEventListener("error", () => {
      before.hidden = true;
      before.closest("figure").classList.add("no-preview");
    });
    before.src = page.options.preview(file) ?? URL.createObjectURL(file);
    $(".again", card).addEventListener("click", () => onAgain(job));
    $(".cancel", card).addEventListener("click", () => onCancel(job));
    page.compare.attach(card, {
      frame: $(".pair", card), before: $("img.before", card), after: $("img.after", card),
      range: $(".split", card), label: `Compare the original and the result: ${file.name}`,
    });
    ui.results.prepend(card);
    return job;
  }

  function setState(job, state, text) {
    job.state = state;
    job.card.dataset.state = state;
    $(".state", job.card).textContent = text;
    $(".again", job.card).disabled = state === "queued" || state === "stylizing" ||
      state === "cancelling" || JOB_ACTIVE.has(state);
    const cancel = $(".cancel", job.card);
    const offered = job.viaJobs && (JOB_ACTIVE.has(state) || state === "cancelling");
    if (!offered && document.activeElement === cancel) $(".again", job.card).focus();
    cancel.hidden = !offered;
    cancel.disabled = state === "cancelling";
  }

  // The card as before a run: no result, no error, the bar at 0.
  function clear(job) {
    const { card } = job;
    for (const after of card.querySelectorAll(".after")) {
      if (after.src) URL.revokeObjectURL(after.src);
      after.hidden = true;
      after.removeAttribute("src");
      if (after instanceof HTMLVideoElement) after.load(); // lets go of the old result
    }
    $(".download", card).hidden = true;
    $(".share", card).hidden = true;
    job.result = null;
    page.compare.reset(card);
    $(".error", card).hidden = true;
    $(".meta", card).replaceChildren();
    $(".progress", card).value = 0;
  }

  // answer: {blob, header(name), type?, duration?, frames?}, from /v1/stylize or from a
  // job's result and record. A video shows in a <video>; pictures, animated or not, in the <img>.
  function show(job, answer, elapsed) {
    const { card, file, options, query } = job;
    const { blob } = answer;
    const type = mediaType(blob.type) || mediaType(answer.type);
    const moving = type.startsWith("video/");
    const url = URL.createObjectURL(blob);
    const style = answer.header("X-Style") || options.style;
    const cache = answer.header("X-Cache") || "unknown";
    const extension = EXTENSIONS[type] || query.get("format") || type.split("/")[1] || "bin";
    const format = (query.get("format") || extension).toUpperCase();
    const after = $(moving ? "video.after" : "img.after", card);
    const label = `${file.name} in the ${style} style`;
    if (moving) after.setAttribute("aria-label", label);
    else after.alt = label;
    after.addEventListener(moving ? "loadedmetadata" : "load", () => {
      const meta = $(".meta", card);
      const size = moving ? [after.videoWidth, after.videoHeight]
        : [after.naturalWidth, after.naturalHeight];
      const pieces = [`${size[0]}×${size[1]} ${format}`];
      const length = answer.duration ?? (moving && Number.isFinite(after.duration) ? after.duration : null);
      if (length) pieces.push(`${length.toFixed(1)} s`);
      if (answer.frames > 1) pieces.push(`${answer.frames} frames`);
      pieces.push(`${style}`, `${elapsed} ms`);
      meta.replaceChildren(badge(`cache ${cache}`, `badge cache-${cache}`), pieces.join(" · "));
      if (answer.header("X-Weights") === "random") meta.append(badge(RANDOM_BADGE, "badge warn"));
      const etag = answer.header("ETag");
      if (etag) meta.title = `ETag ${etag}`;
      if (!moving) page.compare.update(card);
    }, { once: true });
    after.src = url;
    after.hidden = false;
    const download = $(".download", card);
    const stem = file.name.replace(/\.[^.]*$/, "") || (job.video ? "video" : "photo");
    download.href = url;
    download.download = `${stem}-${style}.${extension}`;
    download.textContent = `Download .${extension}`;
    download.hidden = false;
    keepResult(job, { blob, type, style, name: download.download });
    $(".progress", card).value = 100;
    setState(job, "done", `Done · ${elapsed} ms`);
    announce(`${file.name}: done in ${elapsed} ms (cache ${cache}).`);
  }

  // Offered for sharing, zipped by "Download all", and kept in the history (history.js).
  function keepResult(job, { blob, type, style, name }) {
    const result = { name, blob, historyId: null };
    job.result = result;
    finished.delete(job); // made again: now the newest
    finished.add(job);
    page.share.offer($(".share", job.card), new File([blob], name, { type: blob.type || type }));
    page.history.keep({
      name: job.file.name, style, options: job.options, type, blob, downloadName: name,
      original: job.video ? null : job.file, jobId: job.remote?.id,
      onKept: (id) => { result.historyId = id; },
    });
  }

  // What "Download all" zips besides the history: this page's results, newest first.
  page.shownResults = () => [
    ...[...finished].reverse().map((job) => job.result),
    ...page.recent.results(),
  ].filter(Boolean);

  function fail(job, message) {
    const error = $(".error", job.card);
    error.textContent = message;
    error.hidden = false;
    $(".progress", job.card).value = 0;
    setState(job, "failed", "Failed");
    announce(`${job.file.name} failed: ${message}`);
  }

  function showCancelled(job) {
    $(".progress", job.card).value = 0;
    setState(job, "cancelled", "Cancelled");
    announce(`${job.file.name}: the job was cancelled.`);
  }

  page.cards = { create: createJob, clear, setState, show, fail, showCancelled };
})();
