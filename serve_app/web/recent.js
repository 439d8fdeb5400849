// "Recent jobs": after a reload the page lists the user's recent jobs, newest first: with
// an API key, the key's own (GET /v1/jobs); on an open service, which lists nobody's (403
// owner_required), those this browser sent, by the ids kept in localStorage (ids only:
// no names, no pictures). A finished job offers its result, an active one is followed
// again, and one the service no longer knows (404: expired) leaves the list.
// Sets animeganPage.recent: load the list, remember a job the page sent, the results shown.
"use strict";

(() => {
  const page = (window.animeganPage ??= {});
  const { $, announce, mediaType, EXTENSIONS } = page.util;
  const { withKey, bearer, errorOf, errorText } = page.api;
  const { TERMINAL, follow, jobText, clock } = page.jobs;
  const ui = {
    photos: $("#photos"),
    recent: $("#recent"),
    recentTitle: $("#recent-title"),
    recentAbout: $("#recent-about"),
    recentList: $("#recent-list"),
    recentTemplate: $("#recent-template"),
  };
  const JOBS_ITEM = "animegan-serve.jobs"; // localStorage: ids of the jobs this browser sent
  const RECENT_JOBS = 20; // jobs listed (and ids kept), newest first
  const JOB_ID = /^[0-9a-f]{32}$/;


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
    const apiKey = page.api.key();
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
          headers: { Accept: "application/json", ...bearer(page.api.key()) }, cache: "no-store",
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
    clock.sync();
    try {
      const record = await follow(item.record, item.stop.signal, (latest) => updateItem(item, latest));
      if (!item.stop.signal.aborted) updateItem(item, record);
    } catch (error) {
      if (error.gone) removeItem(item, `${jobLabel(item.record)}: ${error.message}`);
      else showItemError(item, error.message);
    } finally {
      following.delete(item);
      clock.sync();
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

  // The listed jobs' state lines count on with the page's clock while they are followed.
  clock.add({
    busy: () => following.size > 0,
    tick(now) {
      for (const item of following) {
        if (!TERMINAL.has(item.record.state)) $(".state", item.li).textContent = jobText(item, now);
      }
    },
  });

  page.api.on("refused", () => {
    if (recent.mode === "server") dropRecent(); // that key's jobs: not shown without it
  });
  // Once the styles are loaded (at the first load, app.js lists them after the styles).
  page.api.on("accepted", () => {
    if (page.options.config) loadRecent(); // this key's jobs
  });
  page.api.on("forgotten", () => {
    if (page.options.config) loadRecent(); // the key's jobs go; an open service's list stays
  });

  page.recent = {
    load: loadRecent,
    remember: rememberJob,
    results: () => [...recent.items.values()].map((item) => item.result),
  };
})();
