// The upload page: plain JS, no build step. Talks to GET /v1/styles and POST /v1/stylize.
"use strict";

(() => {
  const $ = (selector, root = document) => root.querySelector(selector);
  const ui = {
    styleList: $("#style-list"),
    size: $("#size"),
    format: $("#format"),
    photos: $("#photos"),
    drop: $("#drop"),
    limits: $("#limits"),
    status: $("#status"),
    results: $("#results"),
    template: $("#result-template"),
  };
  const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };
  const PARALLEL = 2; // uploads at once; the service batches and queues the rest
  const RANDOM_BADGE = "random weights — meaningless picture";

  let config = null;
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

  // --- options ---------------------------------------------------------------------

  async function loadStyles() {
    try {
      const response = await fetch("/v1/styles", { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(await errorText(await response.blob(), response.status));
      config = await response.json();
    } catch (error) {
      $("#styles-loading").textContent = `Could not load the styles: ${error.message}`;
      announce("The service did not answer; reload the page to try again.");
      return;
    }
    renderStyles();
    ui.size.max = String(config.max_size);
    ui.size.value = String(config.default_size);
    ui.format.replaceChildren(...config.formats.map((name) => new Option(name.toUpperCase(), name)));
    ui.format.value = config.default_format;
    ui.limits.textContent =
      `JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC, up to ${megabytes(config.max_bytes)} ` +
      `and ${Math.round(config.max_pixels / 1e6)} megapixels; ` +
      `sizes up to ${config.max_size} px.`;
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
      const sample = Object.assign(document.createElement("img"), {
        className: "sample", alt: `Sample of the ${style.name} style`, loading: "lazy",
        src: `/static/samples/${encodeURIComponent(style.name)}.jpg`,
      });
      sample.addEventListener("error", () => sample.remove());
      const text = document.createElement("span");
      text.className = "style-text";
      const name = badge(style.name, "style-name");
      name.id = `${id}-name`;
      const about = document.createElement("span");
      about.id = `${id}-about`;
      about.className = "style-about small muted";
      if (style.random_weights) about.append(badge(RANDOM_BADGE, "badge warn"));
      else about.textContent = style.description || `weights: ${style.weights}`;
      text.append(name, about);
      label.append(input, sample, text);
      return label;
    });
    ui.styleList.replaceChildren(...cards);
  }

  function currentOptions() {
    const style = $('input[name="style"]:checked')?.value ?? config.default_style;
    return { style, size: ui.size.value || String(config.default_size), format: ui.format.value };
  }

  // --- jobs ------------------------------------------------------------------------

  function addFiles(files) {
    files = [...files];
    if (!files.length) return;
    if (!config) {
      announce("The styles are still loading; try again in a moment.");
      return;
    }
    if (!ui.size.reportValidity()) {
      announce(`Choose a size from 1 to ${config.max_size} px first.`);
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
    before.src = URL.createObjectURL(file);
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
      state === "stylizing";
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
    job.started = performance.now();
    job.percent = 0;
    setState(job, "uploading", "Uploading 0%");
    const progress = $(".progress", card);
    let xhr;
    try {
      xhr = await send(file, options, (loaded, total) => {
        job.percent = Math.round((100 * loaded) / total);
        progress.value = job.percent;
      }, () => {
        setState(job, "stylizing", "Stylizing");
        progress.removeAttribute("value"); // indeterminate while the model works
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

  function send(file, options, onProgress, onUploaded) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `/v1/stylize?${new URLSearchParams(options)}`);
      xhr.responseType = "blob";
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) onProgress(event.loaded, event.total);
      });
      xhr.upload.addEventListener("load", onUploaded);
      xhr.addEventListener("load", () => resolve(xhr));
      xhr.addEventListener("error", () =>
        reject(new Error("Could not reach the service; check the connection and try again.")));
      xhr.addEventListener("abort", () => reject(new Error("The upload was cancelled.")));
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
