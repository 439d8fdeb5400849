// The upload page: plain JS, no build step. Talks to GET /v1/styles, GET /v1/examples and
// POST /v1/stylize, with an API key when the service asks for one (401).
"use strict";

(() => {
  const $ = (selector, root = document) => root.querySelector(selector);
  const ui = {
    styleList: $("#style-list"),
    size: $("#size"),
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
  };
  const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };
  const PARALLEL = 2; // uploads at once; the service batches and queues the rest
  const RANDOM_BADGE = "random weights — meaningless picture";
  const KEY_ITEM = "animegan-serve.api-key";
  const WARM_POLL_MS = 3000; // how often to ask while the service warms its examples

  let config = null;
  let examples = null; // GET /v1/examples: what the examples are warm for, and each one
  const exampleEntries = []; // {example, button, ready, file}: file once its bytes are here
  const previews = new WeakMap(); // example file -> its thumbnail's URL, decoded already
  const queue = [];
  const running = new Set();
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
  async function withKey(send, onWait) {
    for (;;) {
      const used = apiKey;
      let result;
      try {
        result = await send(used);
      } catch (error) {
        if (!ui.keyForm.hidden && used === apiKey) {
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

  function showKeyPrompt(message, refused) {
    apiKey = null;
    storeKey(null);
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
    await loadExamples();
  }

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
  // The service stylises its example photos for every style at start (at its default
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
      "One click stylises the photo with the options above. Marked “ready”: already " +
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
    announce(`${files.length} photo${files.length > 1 ? "s" : ""} added.`);
  }

  function createJob(file) {
    const card = ui.template.content.firstElementChild.cloneNode(true);
    const job = { file, card };
    $(".name", card).textContent = file.name;
    const before = $(".before", card);
    before.src = previews.get(file) ?? URL.createObjectURL(file);
    before.alt = `Original: ${file.name}`;
    before.addEventListener("load", () => {
      // the after picture and its placeholder take the photo's shape
      card.style.setProperty("--ratio", `${before.naturalWidth} / ${before.naturalHeight}`);
    });
    before.addEventListener("error", () => {
      before.hidden = true;
      before.closest("figure").classList.add("no-preview");
    });
    $(".again", card).addEventListener("click", () => {
      if (!ui.size.reportValidity()) return;
      enqueue(job);
    });
    ui.results.prepend(card);
    return job;
  }

  function setState(job, state, text) {
    job.state = state;
    job.card.dataset.state = state;
    $(".state", job.card).textContent = text;
    $(".again", job.card).disabled = state === "queued" || state === "uploading" ||
      state === "stylizing" || state === "waiting";
  }

  function enqueue(job) {
    const { card } = job;
    job.options = currentOptions();
    const after = $(".after", card);
    if (after.src) URL.revokeObjectURL(after.src);
    after.hidden = true;
    after.removeAttribute("src");
    $(".download", card).hidden = true;
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
    if (running.size && !ticker) ticker = setInterval(tick, 100);
    if (!running.size && ticker) ticker = clearInterval(ticker);
  }

  function tick() {
    const now = performance.now();
    for (const job of running) {
      const elapsed = seconds(now - job.started);
      if (job.state === "uploading") {
        $(".state", job.card).textContent = `Uploading ${job.percent}% · ${elapsed}`;
      } else if (job.state === "stylizing") {
        $(".state", job.card).textContent = `Stylizing · ${elapsed}`;
      }
    }
  }

  async function run(job) {
    const { file, card, options } = job;
    if (file.size > config.max_bytes) {
      const limit = megabytes(config.max_bytes);
      fail(job, `${file.name} has ${megabytes(file.size)}; the limit is ${limit}.`);
      return;
    }
    const progress = $(".progress", card);
    const attempt = (key) => {
      job.started = performance.now(); // a wait for the API key is not the service's time
      job.percent = 0;
      progress.value = 0;
      setState(job, "uploading", "Uploading 0%");
      return send(file, options, key, (loaded, total) => {
        job.percent = Math.round((100 * loaded) / total);
        progress.value = job.percent;
      }, () => {
        setState(job, "stylizing", "Stylizing");
        progress.removeAttribute("value"); // indeterminate while the model works
      });
    };
    let xhr;
    try {
      xhr = await withKey(attempt, () => {
        progress.value = 0;
        setState(job, "waiting", "Waiting for the API key");
      });
    } catch (error) {
      fail(job, error.message);
      return;
    }
    const elapsed = Math.round(performance.now() - job.started);
    if (xhr.status !== 200) {
      fail(job, await errorText(xhr.response, xhr.status));
      return;
    }
    show(job, xhr, elapsed);
  }

  function send(file, options, key, onProgress, onUploaded) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `/v1/stylize?${new URLSearchParams(options)}`);
      for (const [name, value] of Object.entries(bearer(key))) xhr.setRequestHeader(name, value);
      xhr.responseType = "blob";
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) onProgress(event.loaded, event.total);
      });
      xhr.upload.addEventListener("load", onUploaded);
      xhr.addEventListener("load", () => resolve(xhr));
      xhr.addEventListener("error", () =>
        reject(new Error("Could not reach the service; check the connection and try again.")));
      xhr.addEventListener("abort", () => reject(new Error("The upload was cancelled.")));
      if (file.type.startsWith("image/")) {
        // The picture itself as the body: no multipart to build or parse, which is
        // measurably quicker on a cache hit (an example's answer comes at once).
        xhr.setRequestHeader("Content-Type", file.type);
        xhr.send(file);
        return;
      }
      // Anything else goes as the multipart field, so the service judges the bytes
      // and its own message for them is what the page shows.
      const form = new FormData();
      form.append("image", file, file.name);
      xhr.send(form);
    });
  }

  // The API's errors are JSON {"error": {"code", "message"}}; anything else gets a plain line.
  async function errorText(blob, status) {
    try {
      const body = JSON.parse(await blob.text());
      if (body?.error?.message) return body.error.message;
    } catch {
      // not JSON: a proxy's page or an empty body
    }
    return `The service answered with HTTP ${status}.`;
  }

  function show(job, xhr, elapsed) {
    const { card, file, options } = job;
    const blob = xhr.response;
    const url = URL.createObjectURL(blob);
    const style = xhr.getResponseHeader("X-Style") || options.style;
    const cache = xhr.getResponseHeader("X-Cache") || "unknown";
    const after = $(".after", card);
    after.alt = `${file.name} in the ${style} style`;
    after.addEventListener("load", () => {
      const meta = $(".meta", card);
      const pieces = [
        `${after.naturalWidth}×${after.naturalHeight} ${options.format.toUpperCase()}`,
        `${style}`, `${elapsed} ms`,
      ];
      meta.replaceChildren(badge(`cache ${cache}`, `badge cache-${cache}`), pieces.join(" · "));
      if (xhr.getResponseHeader("X-Weights") === "random") meta.append(badge(RANDOM_BADGE, "badge warn"));
      const etag = xhr.getResponseHeader("ETag");
      if (etag) meta.title = `ETag ${etag}`;
    }, { once: true });
    after.src = url;
    after.hidden = false;
    const download = $(".download", card);
    const stem = file.name.replace(/\.[^.]*$/, "") || "photo";
    const extension = EXTENSIONS[blob.type] || options.format;
    download.href = url;
    download.download = `${stem}-${style}.${extension}`;
    download.textContent = `Download .${extension}`;
    download.hidden = false;
    $(".progress", card).value = 100;
    setState(job, "done", `Done · ${elapsed} ms`);
    announce(`${file.name}: done in ${elapsed} ms (cache ${cache}).`);
  }

  function fail(job, message) {
    const error = $(".error", job.card);
    error.textContent = message;
    error.hidden = false;
    $(".progress", job.card).value = 0;
    setState(job, "failed", "Failed");
    announce(`${job.file.name} failed: ${message}`);
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
    const images = [...(event.clipboardData?.files ?? [])].filter((f) => f.type.startsWith("image/"));
    if (!images.length) return;
    event.preventDefault();
    addFiles(images.map((file) => {
      pasted += 1;
      const extension = EXTENSIONS[file.type] || file.type.split("/")[1] || "png";
      return new File([file], `pasted-${pasted}.${extension}`, { type: file.type });
    }));
  });

  loadStyles();
})();
