// The upload page: plain JS, no build step. Talks to GET /v1/styles, GET /v1/examples,
// POST /v1/stylize and, for videos and for sizes above the service's max_sync_size,
// POST /v1/jobs and the job's routes, with an API key when the service asks for one (401).
// At load it lists the user's recent jobs: GET /v1/jobs with a key, else the ids of the
// jobs this browser sent (localStorage). The helpers it uses, loaded before it (index.html),
// are in window.animeganPage: retrying (retry.js), animated (animated.js), compare
// (compare.js), share (share.js), history (history.js, which uses zip.js).
"use strict";

(() => {
  const page = window.animeganPage;
  const $ = (selector, root = document) => root.querySelector(selector);
  const ui = {
    styleList: $("#style-list"),
    size: $("#size"),
    sizeAbout: $("#size-about"),
    format: $("#format"),
    strength: $("#strength"),
    strengthValue: $("#strength-value"),
    preserveColor: $("#preserve-color"),
    portrait: $("#portrait"),
    options: $("#options"),
    examples: $("#examples"),
    exampleList: $("#example-list"),
    examplesAbout: $("#examples-about"),
    photos: $("#photos"),
    drop: $("#drop"),
    limits: $("#limits"),
    status: $("#status"),
    results: $("#results"),
    template: $("#result-template"),
    keyForm: $("#key-form"),
    keyInput: $("#api-key"),
    keyMessage: $("#key-message"),
    keyInUse: $("#key-in-use"),
    forgetKey: $("#forget-key"),
    recent: $("#recent"),
    recentTitle: $("#recent-title"),
    recentAbout: $("#recent-about"),
    recentList: $("#recent-list"),
    recentTemplate: $("#recent-template"),
  };
  // A result's file extension, by its media type (parameters such as "codecs" cut off).
  const EXTENSIONS = {
    "image/png": "png", "image/apng": "png", "image/jpeg": "jpg", "image/webp": "webp",
    "image/gif": "gif", "video/mp4": "mp4", "video/webm": "webm", "video/x-matroska": "mkv",
    "video/matroska": "mkv", "video/quicktime": "mov",
  };
  // Some systems give no media type (or a vague one) to .mkv or .mov files: the name decides.
  const VIDEO_NAME = /\.(mp4|m4v|mov|mkv|webm)$/i;
  const PARALLEL = 2; // uploads at once; the service batches and queues the rest
  const RANDOM_BADGE = "random weights — meaningless picture";
  const KEY_ITEM = "animegan-serve.api-key";
  const JOBS_ITEM = "animegan-serve.jobs"; // localStorage: ids of the jobs this browser sent
  const RECENT_JOBS = 20; // jobs listed (and ids kept), newest first
  const JOB_ID = /^[0-9a-f]{32}$/;
  const WARM_POLL_MS = 3000; // how often to ask while the service warms its examples
  const JOB_POLL_MS = 1000; // how often to ask for a job when its events stream broke
  const JOB_POLL_FAILURES = 30; // unanswered asks in a row before giving up on a job
  const TERMINAL = new Set(["done", "failed", "cancelled"]);
  // The page's own states while a job runs: Cancel is offered, "Again" is not.
  const JOB_ACTIVE = new Set(["uploading", "submitting", "submitted", "running", "waiting"]);

  let config = null;
  let examples = null; // GET /v1/examples: what the examples are warm for, and each one
  const exampleEntries = []; // {example, button, ready, file}: file once its bytes are here
  const previews = new WeakMap(); // example file -> its thumbnail's URL, decoded already
  const queue = [];
  const running = new Set();
  const finished = new Set(); // jobs whose card shows a result (job.result)
  let ticker = null;
  let pasted = 0;

  const announce = (text) => { ui.status.textContent = text; };
  const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;

  function megabytes(bytes) {
    const mb = bytes / 2 ** 20;
    return `${mb >= 10 ? Math.round(mb) : mb.toFixed(1)} MB`;
  }

  function badge(text, className = "badge") {
    const span = document.createElement("span");
    span.className = className;
    span.textContent = text;
    return span;
  }

  // --- API key ---------------------------------------------------------------------
  // Asked for only when a /v1 call answers 401. It lives in sessionStorage, not
  // localStorage: it goes away with the tab instead of staying on the machine.

  let apiKey = readKey();
  let keyWait = null; // {promise, resolve} while calls wait for the user to give a key

  function readKey() {
    try {
      return sessionStorage.getItem(KEY_ITEM) || null;
    } catch {
      return null; // storage disabled: the key lasts until the page reloads
    }
  }

  function storeKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_ITEM, key);
      else sessionStorage.removeItem(KEY_ITEM);
    } catch {
      // storage disabled: see readKey
    }
  }

  const bearer = (key) => (key ? { Authorization: `Bearer ${key}` } : {});

  // send(key) makes one call (a fetch Response or a finished XMLHttpRequest). On 401 the
  // page asks for a key, waits for it, and makes the call again; onWait tells the caller.
  // A 503 or 429 with Retry-After is sent again after its wait (retry.js), counted down by
  // onBusy(line, first), on the status line unless the caller shows it elsewhere.
  async function withKey(send, onWait, onBusy = showBusy) {
    for (;;) {
      const used = apiKey;
      let result;
      try {
        result = await page.retrying(() => send(used), onBusy);
      } catch (error) {
        if (!ui.keyForm.hidden && used === apiKey && !error.cancelled) {
          ui.keyMessage.textContent = `Could not check the key: ${error.message}`;
        }
        throw error;
      }
      if (result.status !== 401) {
        if (used) keyAccepted(used);
        return result;
      }
      if (apiKey && apiKey !== used) continue; // a newer key came meanwhile: try it
      if (apiKey === used) {
        // Not a call from before a key change: this key (or no key) is what was refused.
        const blob = result instanceof XMLHttpRequest ? result.response : await result.blob();
        showKeyPrompt(await errorText(blob, 401), used !== null);
      }
      onWait?.();
      if (!keyWait) {
        let resolve;
        const promise = new Promise((done) => { resolve = done; });
        keyWait = { promise, resolve };
      }
      await keyWait.promise;
    }
  }

  let busyLine = null;
  function showBusy(line) {
    if (line) announce(busyLine = line);
    else if (ui.status.textContent === busyLine) announce(""); // retried: the line is over
  }

  function showKeyPrompt(message, refused) {
    apiKey = null;
    storeKey(null);
    if (recent.mode === "server") dropRecent(); // that key's jobs: not shown without it
    ui.keyInUse.hidden = true;
    // A fresh text node each time, so that a screen reader announces a repeated refusal.
    ui.keyMessage.replaceChildren(refused ? `The key was refused. ${message}` : message);
    ui.keyInput.setAttribute("aria-invalid", String(refused));
    ui.keyForm.hidden = false;
    const loading = $("#styles-loading");
    if (loading) loading.textContent = "The styles load once the API key is accepted.";
    const focused = document.activeElement;
    // Take the focus only if nothing else has it: never from a field someone is using.
    if (!focused || focused === document.body || ui.keyForm.contains(focused)) {
      ui.keyInput.focus();
      ui.keyInput.select();
    }
    announce(refused ? "The API key was refused; enter another." : "Enter an API key to continue.");
  }

  function keyAccepted(key) {
    if (key !== apiKey) return; // an older key, since replaced or forgotten
    storeKey(key);
    ui.keyInUse.hidden = false;
    if (ui.keyForm.hidden) return;
    const hadFocus = ui.keyForm.contains(document.activeElement);
    ui.keyForm.hidden = true;
    ui.keyInput.value = "";
    ui.keyInput.setAttribute("aria-invalid", "false");
    ui.keyMessage.replaceChildren();
    const loading = $("#styles-loading");
    if (loading) loading.textContent = "Loading the styles…";
    if (hadFocus) ui.photos.focus(); // where the skip link leads: the page's main action
    announce("The API key was accepted.");
    if (config) loadRecent(); // this key's jobs (at the first load, loadStyles lists them)
  }

  ui.strength.addEventListener("input", () => {
    const percent = `${Math.round(Number(ui.strength.value) * 100)}%`;
    ui.strengthValue.textContent = percent;
    ui.strength.setAttribute("aria-valuetext", percent);  // read out instead of "0.35"
  });

  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = ui.keyInput.value.trim();
    if (!key) {
      ui.keyMessage.replaceChildren("Enter a key: it cannot be blank.");
      ui.keyInput.focus();
      return;
    }
    apiKey = key;
    ui.keyMessage.replaceChildren("Checking the key…");
    const waiting = keyWait;
    keyWait = null;
    if (waiting) waiting.resolve(); // the calls that met the 401 go again, with this key
    else checkAccess();
  });

  ui.forgetKey.addEventListener("click", () => {
    apiKey = null;
    storeKey(null);
    ui.keyInUse.hidden = true;
    announce("The API key is forgotten.");
    if (config) loadRecent(); // the key's jobs go; an open service's list stays
    checkAccess(); // the service's 401 brings the prompt back, with its own message
  });

  function checkAccess() {
    const send = (key) => fetch("/v1/styles", { headers: { Accept: "application/json", ...bearer(key) } });
    withKey(send).catch(() => {}); // unreachable: the next real call will say so
  }

  // --- options ---------------------------------------------------------------------

  async function loadStyles() {
    try {
      const response = await withKey((key) =>
        fetch("/v1/styles", { headers: { Accept: "application/json", ...bearer(key) } }));
      if (!response.ok) throw new Error(await errorText(await response.blob(), response.status));
      config = await response.json();
    } catch (error) {
      $("#styles-loading").textContent = `Could not load the styles: ${error.message}`;
      announce("The service did not answer; reload the page to try again.");
      return;
    }
    renderStyles();
    ui.size.min = String(config.min_size);
    ui.size.max = String(config.max_size);
    ui.size.value = String(config.default_size);
    ui.format.replaceChildren(...config.formats.map((name) => new Option(name.toUpperCase(), name)));
    ui.format.value = config.default_format;
    ui.limits.textContent =
      `JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC, up to ${megabytes(config.max_bytes)} ` +
      `and ${Math.round(config.max_pixels / 1e6)} megapixels; ` +
      `sizes from ${config.min_size} to ${config.max_size} px.`;
    if (syncLimit() < config.max_size) {
      const sync = syncLimit();
      ui.limits.textContent +=
        ` Sizes above ${sync} px are made as jobs: a progress bar follows each, and it can be cancelled.`;
      ui.sizeAbout.textContent = `Above ${sync} px: made as a job, with a progress bar`;
      ui.sizeAbout.hidden = false;
    }
    ui.limits.textContent += " Videos (MP4, MOV, MKV or WebM) are made as jobs, with a " +
      "progress bar; animated GIF, WebP and PNG come back animated.";
    await loadExamples();
  }

  // The largest size the service makes while the caller waits; above it, jobs. A service
  // from before jobs does not say: all of its sizes are made at once.
  const syncLimit = () => config.max_sync_size ?? config.max_size;

  function renderStyles() {
    const cards = config.styles.map((style) => {
      const id = `style-${style.name.replace(/[^\w-]/g, "_")}`;
      const label = document.createElement("label");
      label.className = "style";
      const input = Object.assign(document.createElement("input"), {
        type: "radio", name: "style", value: style.name, id,
        checked: style.name === config.default_style,
      });
      input.setAttribute("aria-labelledby", `${id}-name`);
      input.setAttribute("aria-describedby", `${id}-about`);
      const text = document.createElement("span");
      text.className = "style-text";
      const name = badge(style.name, "style-name");
      name.id = `${id}-name`;
      const about = document.createElement("span");
      about.id = `${id}-about`;
      about.className = "style-about small muted";
      if (style.random_weights) about.append(badge(RANDOM_BADGE, "badge warn"));
      else about.textContent = style.description || "";
      if (!about.childNodes.length) input.removeAttribute("aria-describedby");
      text.append(name, about);
      label.append(input, text);
      return label;
    });
    ui.styleList.replaceChildren(...cards);
  }

  function currentOptions() {
    const style = $('input[name="style"]:checked')?.value ?? config.default_style;
    const options = {
      style,
      size: ui.size.value || String(config.default_size),
      format: ui.format.value,
      strength: ui.strength.value,
      preserve_color: String(ui.preserveColor.checked),
    };
    // Sent only when on, so that "off" asks exactly what a page without the control did.
    if (ui.portrait.value !== "off") options.portrait = ui.portrait.value;
    return options;
  }

  // --- examples ----------------------------------------------------------------------
  // The service stylizes its example photos for every style at start (at its default
  // size and format). The page downloads each photo once, at load, shows it, and posts
  // those very bytes on a click: the same bytes as were warmed, so the answer is a cache
  // hit and the click waits for no download.

  async function loadExamples() {
    try {
      const response = await withKey((key) =>
        fetch("/v1/examples", { headers: { Accept: "application/json", ...bearer(key) } }));
      if (!response.ok) return; // a service without examples: the page goes without them
      examples = await response.json();
    } catch {
      return;
    }
    if (!examples.examples?.length) return;
    ui.exampleList.replaceChildren(...examples.examples.map(renderExample));
    ui.examplesAbout.textContent =
      "One click stylizes the photo with the options above. Marked “ready”: already " +
      `made for the chosen style at ${examples.size} px ${examples.format.toUpperCase()} ` +
      "with the other controls at their defaults, so the result comes at once.";
    ui.examples.hidden = false;
    markReady();
    if (examples.warming) setTimeout(refreshWarm, WARM_POLL_MS);
  }

  // While the service is still warming its examples, ask again now and then, so the
  // "ready" marks appear as the results do.
  async function refreshWarm() {
    let fresh;
    try {
      const response = await fetch("/v1/examples", {
        headers: { Accept: "application/json", ...bearer(apiKey) },
      });
      if (!response.ok) return;
      fresh = await response.json();
    } catch {
      return;
    }
    const warm = new Map(fresh.examples.map((example) => [example.name, example.warm]));
    for (const { example } of exampleEntries) example.warm = warm.get(example.name) ?? {};
    markReady();
    if (fresh.warming) setTimeout(refreshWarm, WARM_POLL_MS);
  }

  function renderExample(example) {
    const item = document.createElement("li");
    const button = Object.assign(document.createElement("button"), {
      type: "button", className: "example", disabled: true,
    });
    button.setAttribute("aria-describedby", "examples-about");
    const thumb = Object.assign(document.createElement("img"), { alt: "", className: "thumb" });
    thumb.width = example.width;
    thumb.height = example.height;
    const name = badge(example.name, "example-name");
    const ready = badge("ready", "badge ready");
    ready.hidden = true;
    button.append(thumb, name, ready);
    item.append(button);
    const entry = { example, button, ready, file: null };
    button.addEventListener("click", () => {
      if (entry.file) addFiles([entry.file]);
    });
    // Fetched as bytes (not an <img src>): the page needs the blob to post it.
    fetch(example.url)
      .then((response) => {
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        return response.blob();
      })
      .then((blob) => {
        entry.file = new File([blob], example.name, { type: blob.type || example.media_type });
        thumb.src = URL.createObjectURL(entry.file);
        previews.set(entry.file, thumb.src);
        button.disabled = false;
      })
      .catch(() => item.remove()); // unreachable photo: one example fewer, no broken slot
    exampleEntries.push(entry);
    return item;
  }

  // "ready" where the chosen options are those the service warmed the examples at.
  function markReady() {
    if (!examples || !config) return;
    const options = currentOptions();
    const atDefaults = Number(options.size) === examples.size &&
      options.format === examples.format && Number(options.strength) === 1 &&
      options.preserve_color === "false" && !options.portrait;
    for (const { example, ready } of exampleEntries) {
      ready.hidden = !(atDefaults && example.warm?.[options.style]);
    }
  }

  ui.options.addEventListener("input", markReady);
  ui.options.addEventListener("change", markReady);

  // --- jobs ------------------------------------------------------------------------

  function addFiles(files) {
    files = [...files];
    if (!files.length) return;
    if (!config) {
      announce(ui.keyForm.hidden ? "The styles are still loading; try again in a moment."
        : "Enter the API key first: the styles load once it is accepted.");
      return;
    }
    if (!ui.size.reportValidity()) {
      announce(`Choose a size from ${config.min_size} to ${config.max_size} px first.`);
      return;
    }
    for (const file of files) enqueue(createJob(file));
    announce(`${files.length} file${files.length > 1 ? "s" : ""} added.`);
  }

  // A video by its media type or, where the system gave it none that says so, its name.
  // Whether a picture is animated is known only from its bytes: see animated().
  const isVideo = (file) => file.type.startsWith("video/") || VIDEO_NAME.test(file.name);

  function createJob(file) {
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
    before.src = previews.get(file) ?? URL.createObjectURL(file);
    $(".again", card).addEventListener("click", () => {
      // A job cancelled while it waited for the API key ends its run once the key comes.
      if (running.has(job) || queue.includes(job)) return;
      if (!ui.size.reportValidity()) return;
      enqueue(job);
    });
    $(".cancel", card).addEventListener("click", () => cancelJob(job));
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

  function enqueue(job) {
    const { card } = job;
    job.options = currentOptions();
    // Videos are always jobs; pictures by their size (and an animation too long to make
    // at once is sent on to a job when /v1/stylize answers use_jobs: see run).
    job.viaJobs = job.video || Number(job.options.size) > syncLimit();
    Object.assign(job, { remote: null, record: null, uploaded: false, cancelled: false });
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
    syncTicker();
  }

  // The clock of the state lines: runs while a card's job runs or a listed job is followed.
  function syncTicker() {
    const busy = running.size > 0 || following.size > 0;
    if (busy && !ticker) ticker = setInterval(tick, 100);
    if (!busy && ticker) ticker = clearInterval(ticker);
  }

  function tick() {
    const now = performance.now();
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
    for (const item of following) {
      if (!TERMINAL.has(item.record.state)) $(".state", item.li).textContent = jobText(item, now);
    }
  }

  // The service's byte limit for videos and animations, where /v1/styles says it; a
  // service that does not say judges the size itself (413).
  const mediaLimit = () => config.max_media_bytes ?? Infinity;

  async function run(job) {
    const { file, card } = job;
    job.animated = !job.video && await page.animated(file);
    const moving = job.video || job.animated;
    const limit = moving ? Math.max(mediaLimit(), config.max_bytes) : config.max_bytes;
    if (file.size > limit) {
      fail(job, `${file.name} has ${megabytes(file.size)}; the limit is ${megabytes(limit)}.`);
      return;
    }
    // An animation past /v1/stylize's byte limit can still be a job (its limit is higher).
    if (job.animated && file.size > config.max_bytes) job.viaJobs = true;
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

  function send(path, job, key, onProgress, onUploaded) {
    const { query, body } = job;
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      job.xhr = xhr; // for Cancel while a job's upload is under way
      xhr.open("POST", `${path}?${query}`);
      for (const [name, value] of Object.entries(bearer(key))) xhr.setRequestHeader(name, value);
      if (body.type) xhr.setRequestHeader("Content-Type", body.type);
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

  // The API's errors are JSON {"error": {"code", "message"}}; anything else gets a plain line.
  async function errorOf(blob, status) {
    try {
      const body = JSON.parse(await blob.text());
      if (body?.error?.message) return { code: body.error.code ?? null, message: body.error.message };
    } catch {
      // not JSON: a proxy's page or an empty body
    }
    return { code: null, message: `The service answered with HTTP ${status}.` };
  }

  async function errorText(blob, status) {
    return (await errorOf(blob, status)).message;
  }

  // --- results -----------------------------------------------------------------------

  const mediaType = (type) => (type || "").split(";")[0].trim().toLowerCase();

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
    ...[...recent.items.values()].map((item) => item.result),
  ].filter(Boolean);

  function fail(job, message) {
    const error = $(".error", job.card);
    error.textContent = message;
    error.hidden = false;
    $(".progress", job.card).value = 0;
    setState(job, "failed", "Failed");
    announce(`${job.file.name} failed: ${message}`);
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
    rememberJob(job.remote.id);
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

  function showCancelled(job) {
    $(".progress", job.card).value = 0;
    setState(job, "cancelled", "Cancelled");
    announce(`${job.file.name}: the job was cancelled.`);
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

  function pause(ms, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
    });
  }

  async function fetchResult(job, record) {
    const { id } = record;
    const response = await withKey((key) =>
      fetch(`/v1/jobs/${encodeURIComponent(id)}/result`, { headers: bearer(key) }));
    if (!response.ok) throw new Error(await errorText(await response.blob(), response.status));
    const blob = await response.blob();
    const elapsed = Math.round(performance.now() - job.started);
    const style = config.styles.find((s) => s.name === job.options.style);
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

  // --- recent jobs -------------------------------------------------------------------
  // After a reload the page lists the user's recent jobs, newest first: with an API key,
  // the key's own (GET /v1/jobs); on an open service, which lists nobody's (403
  // owner_required), those this browser sent, by the ids kept in localStorage (ids only:
  // no names, no pictures). A finished job offers its result, an active one is followed
  // again, and one the service no longer knows (404: expired) leaves the list.

  const recent = {
    mode: null, // "server": GET /v1/jobs; "local": the ids in localStorage; null: not known
    generation: 0, // bumped when the list is dropped: answers for an older list are ignored
    unsaved: [], // ids of jobs sent while the mode was not known yet, oldest first
    items: new Map(), // job id -> {id, li, record, recordAt, stop, url}
  };
  const following = new Set(); // listed items whose job is followed now
  const onPage = new Set(); // ids of the jobs with a card on the page: not listed twice
  const KIND_NAMES = { still: "Picture", animation: "Animation", video: "Video" };

  function storedJobIds() {
    try {
      const ids = JSON.parse(localStorage.getItem(JOBS_ITEM) || "[]");
      return Array.isArray(ids) ? [...new Set(ids.filter((id) => JOB_ID.test(id)))] : [];
    } catch {
      return []; // storage disabled, or not a list this page wrote
    }
  }

  function storeJobIds(ids) {
    try {
      if (ids.length) localStorage.setItem(JOBS_ITEM, JSON.stringify(ids.slice(0, RECENT_JOBS)));
      else localStorage.removeItem(JOBS_ITEM);
    } catch {
      // storage disabled or full: the job is listed no more after a reload
    }
  }

  function setMode(mode) {
    recent.mode = mode;
    if (mode === "local" && recent.unsaved.length) {
      const sent = recent.unsaved.reverse();
      storeJobIds([...sent, ...storedJobIds().filter((id) => !sent.includes(id))]);
    }
    recent.unsaved = [];
    ui.recentAbout.textContent = mode === "server"
      ? "The newest jobs made with this API key. Finished jobs are kept until they expire."
      : "Jobs sent from this browser. Finished jobs are kept until they expire.";
  }

  // A job this page sent: kept by its id where the list is this browser's.
  function rememberJob(id) {
    onPage.add(id);
    if (recent.mode === "local") {
      storeJobIds([id, ...storedJobIds().filter((old) => old !== id)]);
    } else if (recent.mode === null) {
      recent.unsaved.push(id);
    }
  }

  function dropRecent() {
    recent.generation += 1;
    recent.mode = null;
    for (const item of recent.items.values()) {
      item.stop?.abort();
      if (item.url) URL.revokeObjectURL(item.url);
    }
    recent.items.clear();
    ui.recentList.replaceChildren();
    ui.recent.hidden = true;
  }

  async function loadRecent() {
    dropRecent();
    const generation = recent.generation;
    const current = () => generation === recent.generation;
    let records = null;
    if (apiKey) {
      try {
        const response = await fetch(`/v1/jobs?limit=${RECENT_JOBS}`, {
          headers: { Accept: "application/json", ...bearer(apiKey) }, cache: "no-store",
        });
        if (response.ok) {
          records = (await response.json()).jobs;
        } else if ((await errorOf(await response.blob(), response.status)).code !== "owner_required") {
          return; // refused (the page asks for a key at its next call) or not answered
        }
      } catch {
        return; // unreachable: the page's next call says so
      }
    }
    if (!current()) return;
    setMode(records ? "server" : "local");
    if (!records) records = await storedRecords(current);
    if (!current()) return;
    for (const record of records) {
      if (!onPage.has(record.id) && !recent.items.has(record.id)) addItem(record);
    }
  }

  // The jobs of the ids this browser kept; those the service no longer knows are let go.
  async function storedRecords(current) {
    const ids = storedJobIds();
    const answers = await Promise.all(ids.map(async (id) => {
      try {
        const response = await fetch(`/v1/jobs/${id}`, {
          headers: { Accept: "application/json", ...bearer(apiKey) }, cache: "no-store",
        });
        if (response.status === 404) return "gone";
        return response.ok ? await response.json() : null;
      } catch {
        return null; // not answered now: kept, and asked for again at the next load
      }
    }));
    if (!current()) return [];
    const gone = ids.filter((id, i) => answers[i] === "gone");
    if (gone.length) storeJobIds(storedJobIds().filter((id) => !gone.includes(id)));
    return answers.filter((answer) => answer && answer !== "gone");
  }

  // "Picture · alpha · 384 px"
  function jobLabel(record) {
    const { style, size } = record.options || {};
    return [KIND_NAMES[record.kind] || "Job", style, size && `${size} px`]
      .filter(Boolean).join(" · ");
  }

  function addItem(record) {
    const li = ui.recentTemplate.content.firstElementChild.cloneNode(true);
    const item = { id: record.id, li, record: null, recordAt: 0, stop: null, url: null, result: null };
    const label = jobLabel(record);
    li.dataset.job = record.id;
    const name = $(".recent-name", li);
    name.id = `job-${record.id}`;
    name.textContent = label;
    const sent = new Date(record.created_at * 1000);
    const time = $("time", li);
    time.dateTime = sent.toISOString();
    time.textContent = sent.toDateString() === new Date().toDateString()
      ? `sent ${sent.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`
      : `sent ${sent.toLocaleString([], { dateStyle: "medium", timeStyle: "short" })}`;
    $(".progress", li).setAttribute("aria-label", `Progress of ${label}`);
    for (const button of li.querySelectorAll("button")) button.setAttribute("aria-describedby", name.id);
    $(".show", li).addEventListener("click", () => showRecentResult(item));
    $(".cancel", li).addEventListener("click", () => cancelRecent(item));
    recent.items.set(item.id, item);
    ui.recentList.append(li);
    ui.recent.hidden = false;
    updateItem(item, record);
    if (!TERMINAL.has(record.state)) followItem(item);
  }

  function updateItem(item, record) {
    const { li } = item;
    const before = item.record?.state;
    item.record = record;
    item.recordAt = performance.now();
    li.dataset.state = record.state;
    const active = !TERMINAL.has(record.state);
    const progress = $(".progress", li);
    progress.hidden = !active;
    $(".cancel", li).hidden = !active;
    $(".cancel", li).disabled = false;
    $(".show", li).hidden = record.state !== "done" || item.url !== null;
    const error = $(".error", li);
    error.hidden = record.state !== "failed";
    error.textContent = record.state === "failed" ? record.error?.message || "The job failed." : "";
    let text = { failed: "Failed", cancelled: "Cancelled" }[record.state];
    if (active) {
      text = jobText(item, item.recordAt);
      progress.value = Math.round(100 * (record.progress || 0));
      progress.setAttribute("aria-valuetext", text);
    } else if (record.state === "done") {
      text = ["Done", resultText(record)].filter(Boolean).join(" · ");
    }
    $(".state", li).textContent = text;
    if (before && before !== record.state && !active) {
      announce(`${jobLabel(record)}: ${text.split(" · ")[0].toLowerCase()}.`);
    }
  }

  // "384×288 PNG", "64×48 WEBM · 4.0 s"
  function resultText({ result }) {
    if (!result) return "";
    const type = mediaType(result.media_type);
    const pieces = [`${result.width}×${result.height} ${(EXTENSIONS[type] || type.split("/")[1] || "").toUpperCase()}`];
    if (result.duration_s) pieces.push(`${result.duration_s.toFixed(1)} s`);
    return pieces.join(" · ");
  }

  async function followItem(item) {
    item.stop = new AbortController();
    following.add(item);
    syncTicker();
    try {
      const record = await follow(item.record, item.stop.signal, (latest) => updateItem(item, latest));
      if (!item.stop.signal.aborted) updateItem(item, record);
    } catch (error) {
      if (error.gone) removeItem(item, `${jobLabel(item.record)}: ${error.message}`);
      else showItemError(item, error.message);
    } finally {
      following.delete(item);
      syncTicker();
    }
  }

  function showItemError(item, message) {
    const error = $(".error", item.li);
    error.textContent = message;
    error.hidden = false;
    announce(`${jobLabel(item.record)}: ${message}`);
  }

  async function cancelRecent(item) {
    const cancel = $(".cancel", item.li);
    cancel.disabled = true;
    item.stop?.abort();
    $(".state", item.li).textContent = "Cancelling";
    try {
      const response = await withKey((key) =>
        fetch(`/v1/jobs/${item.id}`, { method: "DELETE", headers: bearer(key) }));
      if (response.status === 404) {
        removeItem(item, `${jobLabel(item.record)}: ${await errorText(await response.blob(), 404)}`);
        return;
      }
      if (!response.ok) throw new Error(await errorText(await response.blob(), response.status));
      updateItem(item, await response.json());
    } catch (error) {
      showItemError(item, `Could not cancel the job: ${error.message}`);
      followItem(item); // still running: followed again
    }
  }

  // Fetched with the key (a plain link could not carry it), shown in the list, and offered
  // for download.
  async function showRecentResult(item) {
    const { li, record } = item;
    const button = $(".show", li);
    button.disabled = true;
    try {
      const response = await withKey((key) =>
        fetch(`/v1/jobs/${item.id}/result`, { headers: bearer(key) }));
      if (response.status === 404) {
        removeItem(item, `${jobLabel(record)}: ${await errorText(await response.blob(), 404)}`);
        return;
      }
      if (!response.ok) throw new Error(await errorText(await response.blob(), response.status));
      const blob = await response.blob();
      const type = mediaType(blob.type) || mediaType(record.result?.media_type);
      const moving = type.startsWith("video/");
      const label = `Result: ${jobLabel(record)}`;
      const media = document.createElement(moving ? "video" : "img");
      if (moving) {
        Object.assign(media, { controls: true, playsInline: true, preload: "metadata" });
        media.setAttribute("aria-label", label);
      } else {
        media.alt = label;
      }
      item.url = URL.createObjectURL(blob);
      media.src = item.url;
      const box = $(".recent-result", li);
      box.replaceChildren(media);
      box.hidden = false;
      const extension = EXTENSIONS[type] || type.split("/")[1] || "bin";
      const download = $(".download", li);
      const kind = (KIND_NAMES[record.kind] || "job").toLowerCase();
      download.href = item.url;
      download.download = `${kind}-${item.id.slice(0, 8)}-${record.options?.style ?? "result"}.${extension}`;
      item.result = { name: download.download, blob };
      page.history.sync(); // "Download all" takes it too
      download.textContent = `Download .${extension}`;
      download.setAttribute("aria-describedby", `job-${item.id}`);
      download.hidden = false;
      button.hidden = true;
      download.focus(); // the button it replaces had the focus
      announce(`${jobLabel(record)}: the result is shown.`);
    } catch (error) {
      showItemError(item, error.message);
    } finally {
      button.disabled = false;
    }
  }

  function removeItem(item, message) {
    item.stop?.abort();
    if (item.url) URL.revokeObjectURL(item.url);
    recent.items.delete(item.id);
    if (recent.mode === "local") storeJobIds(storedJobIds().filter((id) => id !== item.id));
    const hadFocus = item.li.contains(document.activeElement);
    item.li.remove();
    ui.recent.hidden = recent.items.size === 0;
    if (hadFocus) (ui.recent.hidden ? ui.photos : ui.recentTitle).focus();
    announce(message);
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

  loadStyles().then(() => {
    if (config) loadRecent();
  });
})();
