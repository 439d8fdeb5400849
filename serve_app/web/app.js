// The upload page: plain JS, no build step. Takes the files (picker, drop, paste, an
// example's click), makes each one a card (cards.js) and sends it, two at a time: to
// POST /v1/stylize, or, for videos and for sizes above the service's max_sync_size, to
// POST /v1/jobs, following the job (jobs.js) and offering Cancel. At load it gets the
// styles and examples (options.js), then lists the user's recent jobs (recent.js). Every
// call carries the API key when the service asks for one (api.js). The helpers, loaded
// before it (index.html), are in window.animeganPage: util (util.js), api, options, jobs,
// recent, cards, retrying (retry.js), animated (animated.js), compare (compare.js), share
// (share.js), history (history.js, which uses zip.js). The Camera mode is camera.js's; its
// snapshots come here as uploads (page.upload).
"use strict";

(() => {
  const page = window.animeganPage;
  const { $, announce, seconds, megabytes, EXTENSIONS } = page.util;
  const { withKey, bearer, errorOf, errorText } = page.api;
  const { TERMINAL, follow, jobText, clock } = page.jobs;
  const { setState, show, fail, showCancelled } = page.cards;
  const options = page.options;
  const ui = {
    size: $("#size"),
    photos: $("#photos"),
    drop: $("#drop"),
  };
  const PARALLEL = 2; // uploads at once; the service batches and queues the rest
  const queue = [];
  const running = new Set();
  let pasted = 0;

  // --- the files and their queue ----------------------------------------------------

  function addFiles(files) {
    files = [...files];
    if (!files.length) return;
    if (!options.config) {
      announce(page.api.prompting() ? "Enter the API key first: the styles load once it is accepted."
        : "The styles are still loading; try again in a moment.");
      return;
    }
    if (!ui.size.reportValidity()) {
      announce(`Choose a size from ${options.config.min_size} to ${options.config.max_size} px first.`);
      return;
    }
    for (const file of files) enqueue(createJob(file));
    announce(`${files.length} file${files.length > 1 ? "s" : ""} added.`);
  }

  // Again: the same file, with the options chosen now.
  function again(job) {
    // A job cancelled while it waited for the API key ends its run once the key comes.
    if (running.has(job) || queue.includes(job)) return;
    if (!ui.size.reportValidity()) return;
    enqueue(job);
  }

  const createJob = (file) => page.cards.create(file, { onAgain: again, onCancel: cancelJob });

  function enqueue(job) {
    job.options = options.current();
    // Videos are always jobs; pictures by their size (and an animation too long to make
    // at once is sent on to a job when /v1/stylize answers use_jobs: see run).
    job.viaJobs = job.video || Number(job.options.size) > options.syncLimit();
    Object.assign(job, { remote: null, record: null, uploaded: false, cancelled: false });
    page.cards.clear(job);
    setState(job, "queued", "Queued");
    queue.push(job);
    pump();
  }

  function pump() {
    while (running.size < PARALLEL && queue.length) {
      const job = queue.shift();
      running.add(job);
      run(job).finally(() => {
        running.delete(job);
        pump();
      });
    }
    clock.sync();
  }

  // The cards' state lines count on with the page's clock (jobs.js) while their jobs run.
  clock.add({
    busy: () => running.size > 0,
    tick(now) {
      for (const job of running) {
        const elapsed = seconds(now - job.started);
        if (job.state === "uploading") {
          $(".state", job.card).textContent = `Uploading ${job.percent}% · ${elapsed}`;
        } else if (job.state === "stylizing") {
          $(".state", job.card).textContent = `Stylizing · ${elapsed}`;
        } else if (job.state === "submitting") {
          $(".state", job.card).textContent = `Submitting the job · ${elapsed}`;
        } else if ((job.state === "submitted" || job.state === "running") && job.record) {
          $(".state", job.card).textContent = `${jobText(job, now)} · ${elapsed}`;
        }
      }
    },
  });

  async function run(job) {
    const { file, card } = job;
    job.animated = !job.video && await page.animated(file);
    const moving = job.video || job.animated;
    const { max_bytes: maxBytes } = options.config;
    const limit = moving ? Math.max(options.mediaLimit(), maxBytes) : maxBytes;
    if (file.size > limit) {
      fail(job, `${file.name} has ${megabytes(file.size)}; the limit is ${megabytes(limit)}.`);
      return;
    }
    // An animation past /v1/stylize's byte limit can still be a job (its limit is higher).
    if (job.animated && file.size > maxBytes) job.viaJobs = true;
    prepare(job);
    if (!job.viaJobs) {
      const progress = $(".progress", card);
      const xhr = await upload(job, "/v1/stylize", () => {
        setState(job, "stylizing", "Stylizing");
        progress.removeAttribute("value"); // indeterminate while the model works
      });
      if (!xhr) return;
      const elapsed = Math.round(performance.now() - job.started);
      if (xhr.status === 200) {
        show(job, { blob: xhr.response, header: (name) => xhr.getResponseHeader(name) }, elapsed);
        return;
      }
      const error = await errorOf(xhr.response, xhr.status);
      if (error.code !== "use_jobs") {
        fail(job, error.message);
        return;
      }
      // Too much to make while the page waits (an animation's frames × pixels, or a size
      // past a limit the service changed since the page loaded): the same upload, as a job.
      job.viaJobs = true;
      announce(`${file.name}: too large to make at once; it is made as a job.`);
    }
    await runAsJob(job);
  }

  // What is sent, the same whichever route takes it. The query: the controls, except
  // that a video or an animation keeps its own format (Format is for still pictures; a
  // GIF comes back a GIF) and has no face search. The body: the file itself where its
  // media type says what it is (no multipart to build or parse, measurably quicker on a
  // cache hit); anything else as the multipart field, so the service judges the bytes and
  // its own message for them is what the page shows.
  function prepare(job) {
    const { file, options } = job;
    const query = { ...options };
    if (job.video || job.animated) {
      delete query.format;
      delete query.portrait;
    }
    job.query = new URLSearchParams(query);
    if (file.type.startsWith("image/") || file.type.startsWith("video/")) {
      job.body = { type: file.type, data: file };
    } else {
      const form = new FormData();
      form.append("image", file, file.name);
      job.body = { type: null, data: form };
    }
  }

  // One upload of the prepared body, to /v1/stylize or /v1/jobs, with the API key (and
  // again once one is given, if the service asks for it). Returns the finished request,
  // or null once the card says why there is none. onUploaded: the body is all sent.
  async function upload(job, path, onUploaded) {
    const progress = $(".progress", job.card);
    const attempt = (key) => {
      if (job.cancelled) {
        // Cancelled while it waited for the API key: nothing to send (and no key to judge).
        throw Object.assign(new Error("The job was cancelled."), { cancelled: true });
      }
      job.started = performance.now(); // a wait for the API key is not the service's time
      job.percent = 0;
      progress.value = 0;
      setState(job, "uploading", "Uploading 0%");
      return send(path, job, key, (loaded, total) => {
        job.percent = Math.round((100 * loaded) / total);
        progress.value = job.percent;
      }, onUploaded);
    };
    const busy = (line, first) => {
      if (!line || job.cancelled) return; // cancelled meanwhile: the card says so already
      setState(job, "waiting", line); // like a wait for the key: Cancel stops a job's
      if (first) announce(`${job.file.name}: ${line}`);
    };
    try {
      return await withKey(attempt, () => {
        progress.value = 0;
        setState(job, "waiting", "Waiting for the API key");
      }, busy);
    } catch (error) {
      if (!job.cancelled) fail(job, error.message);
      else if (job.state !== "cancelled") showCancelled(job);
      return null;
    }
  }

  // 128 random bits as hex (crypto.randomUUID exists on secure pages only).
  function newKey() {
    return Array.from(crypto.getRandomValues(new Uint8Array(16)),
      (byte) => byte.toString(16).padStart(2, "0")).join("");
  }

  function send(path, job, key, onProgress, onUploaded) {
    const { query, body } = job;
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      job.xhr = xhr; // for Cancel while a job's upload is under way
      xhr.open("POST", `${path}?${query}`);
      for (const [name, value] of Object.entries(bearer(key))) xhr.setRequestHeader(name, value);
      if (body.type) xhr.setRequestHeader("Content-Type", body.type);
      // The same key on every retry of one job: a 503 that came after the service made it
      // (a proxy's) finds that job instead of making a second.
      if (path === "/v1/jobs") xhr.setRequestHeader("Idempotency-Key", (job.idempotencyKey ??= newKey()));
      xhr.responseType = "blob";
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) onProgress(event.loaded, event.total);
      });
      xhr.upload.addEventListener("load", onUploaded);
      xhr.addEventListener("load", () => resolve(xhr));
      xhr.addEventListener("error", () =>
        reject(new Error("Could not reach the service; check the connection and try again.")));
      xhr.addEventListener("abort", () => reject(new Error("The upload was cancelled.")));
      xhr.send(body.data);
    });
  }

  // --- large prints and videos: jobs -------------------------------------------------
  // Videos, sizes above max_sync_size, and animations the service will not make at once
  // are submitted to POST /v1/jobs and followed on the job's
  // events stream. The stream is read with fetch(), not EventSource: EventSource cannot
  // send the Authorization header the API key needs. If the stream breaks, the page asks
  // for the job every second instead.

  async function runAsJob(job) {
    const progress = $(".progress", job.card);
    job.stop = new AbortController(); // Cancel stops following the job at once
    const xhr = await upload(job, "/v1/jobs", () => {
      job.uploaded = true;
      progress.value = 0; // from here the bar is the job's own progress
      setState(job, "submitting", "Submitting the job");
    });
    if (!xhr) return;
    if (xhr.status !== 200 && xhr.status !== 202) {
      fail(job, await errorText(xhr.response, xhr.status));
      return;
    }
    try {
      job.remote = JSON.parse(await xhr.response.text());
    } catch {
      fail(job, "The service's answer to the job was not readable.");
      return;
    }
    page.recent.remember(job.remote.id);
    let record = job.remote;
    try {
      if (!job.cancelled) {
        followed(job, record);
        if (!TERMINAL.has(record.state)) {
          record = await follow(record, job.stop.signal, (latest) => followed(job, latest));
        }
      }
      if (job.cancelled) {
        await deleteJob(job);
        showCancelled(job);
      } else if (record.state === "done") {
        await fetchResult(job, record);
      } else if (record.state === "failed") {
        fail(job, record.error?.message || "The job failed.");
      } else {
        showCancelled(job); // cancelled elsewhere while it was followed
      }
    } catch (error) {
      fail(job, error.message);
    }
  }

  function cancelJob(job) {
    if (job.cancelled || !job.viaJobs) return;
    job.cancelled = true;
    if (job.state === "waiting") {
      // Nothing sent yet: it is cancelled now (its turn after the key sends nothing).
      showCancelled(job);
      return;
    }
    setState(job, "cancelling", "Cancelling");
    announce(`${job.file.name}: cancelling the job.`);
    // An upload not finished yet made no job: stop it. Once the body is sent, the job
    // exists (or is being made): runAsJob deletes it as soon as it knows the id.
    if (!job.uploaded) job.xhr?.abort();
    job.stop?.abort();
  }

  async function deleteJob(job) {
    const { id } = job.remote;
    const response = await withKey((key) =>
      fetch(`/v1/jobs/${encodeURIComponent(id)}`, { method: "DELETE", headers: bearer(key) }));
    // 404: gone already (expired): nothing is left to cancel.
    if (!response.ok && response.status !== 404) {
      throw new Error(`Could not cancel the job: ${await errorText(await response.blob(), response.status)}`);
    }
  }

  // The job as last heard of: the bar, its spoken value, the state line.
  function followed(job, record) {
    job.record = record;
    job.recordAt = performance.now();
    if (job.cancelled || TERMINAL.has(record.state)) return;
    const progress = $(".progress", job.card);
    progress.value = Math.round(100 * (record.progress || 0));
    const state = record.state === "running" ? "running" : "submitted";
    const text = jobText(job, job.recordAt);
    progress.setAttribute("aria-valuetext", text);
    if (state !== job.state) {
      announce(`${job.file.name}: ${state === "running" ? "the job is running" : "the job is queued"}.`);
    }
    setState(job, state, `${text} · ${seconds(job.recordAt - job.started)}`);
  }
  async function fetchResult(job, record) {
    const { id } = record;
    const response = await withKey((key) =>
      fetch(`/v1/jobs/${encodeURIComponent(id)}/result`, { headers: bearer(key) }));
    if (!response.ok) throw new Error(await errorText(await response.blob(), response.status));
    const blob = await response.blob();
    const elapsed = Math.round(performance.now() - job.started);
    const style = options.config.styles.find((s) => s.name === job.options.style);
    // What /v1/stylize says in headers, a job says in its record and the style list.
    const told = {
      "X-Cache": record.result?.cache,
      "X-Weights": style?.random_weights ? "random" : null,
    };
    show(job, {
      blob,
      header: (name) => told[name] ?? response.headers.get(name),
      type: record.result?.media_type,
      duration: record.result?.duration_s ?? null,
      frames: record.result?.frames ?? null,
    }, elapsed);
  }

  // --- input: picker, drop, paste ----------------------------------------------------

  ui.photos.addEventListener("change", () => {
    addFiles(ui.photos.files);
    ui.photos.value = ""; // choosing the same file again still fires "change"
  });

  let dragDepth = 0;
  document.addEventListener("dragenter", (event) => {
    if (!event.dataTransfer?.types.includes("Files")) return;
    dragDepth += 1;
    ui.drop.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) ui.drop.classList.remove("dragging");
  });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault(); // dropped anywhere on the page: never navigate away to the file
    dragDepth = 0;
    ui.drop.classList.remove("dragging");
    addFiles(event.dataTransfer?.files ?? []);
  });

  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files ?? [])]
      .filter((f) => f.type.startsWith("image/") || f.type.startsWith("video/"));
    if (!files.length) return;
    event.preventDefault();
    addFiles(files.map((file) => {
      pasted += 1;
      const extension = EXTENSIONS[file.type] || file.type.split("/")[1] || "png";
      return new File([file], `pasted-${pasted}.${extension}`, { type: file.type });
    }));
  });

  options.onPick(addFiles); // an example's photo, clicked
  page.upload = addFiles; // a camera snapshot (camera.js), sent as an upload

  options.load().then(() => {
    if (options.config) page.recent.load();
  });
})();
