// The options panel: the styles (GET /v1/styles) with the size, format and other controls,
// and the example photos (GET /v1/examples) with their "ready" marks. A click on an example
// adds its photo as an upload, through onPick (app.js). Sets animeganPage.options: the
// service's settings (config), the chosen options, and the limits that decide a job.
"use strict";

(() => {
  const page = (window.animeganPage ??= {});
  const { $, announce, megabytes, badge, RANDOM_BADGE } = page.util;
  const { withKey, bearer, errorText } = page.api;
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
    limits: $("#limits"),
  };
  const WARM_POLL_MS = 3000; // how often to ask while the service warms its examples

  let config = null;
  let loaded = () => {};
  let examples = null; // GET /v1/examples: what the examples are warm for, and each one
  const exampleEntries = []; // {example, button, ready, file}: file once its bytes are here
  const previews = new WeakMap(); // example file -> its thumbnail's URL, decoded already
  let pick = () => {}; // onPick: what a click on an example does with its photo

  ui.strength.addEventListener("input", () => {
    const percent = `${Math.round(Number(ui.strength.value) * 100)}%`;
    ui.strengthValue.textContent = percent;
    ui.strength.setAttribute("aria-valuetext", percent);  // read out instead of "0.35"
  });

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
    loaded();
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
        headers: { Accept: "application/json", ...bearer(page.api.key()) },
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
      if (entry.file) pick([entry.file]);
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

  // Enter in the size field submits the form, which has nowhere to go: the browser would
  // load the page again, losing every card (the options apply as they are changed).
  ui.options.addEventListener("submit", (event) => event.preventDefault());
  ui.options.addEventListener("input", markReady);
  ui.options.addEventListener("change", markReady);

  // The service's byte limit for videos and animations, where /v1/styles says it; a
  // service that does not say judges the size itself (413).
  const mediaLimit = () => config.max_media_bytes ?? Infinity;

  page.options = {
    get config() { return config; },
    load: loadStyles,
    current: currentOptions,
    syncLimit,
    mediaLimit,
    preview: (file) => previews.get(file), // an example's thumbnail, for its card
    onPick(fn) { pick = fn; },
    onLoaded(fn) { loaded = fn; }, // the settings are here (after an API key, perhaps)
  };
})();
