// The history: the user's finished pictures kept in this browser (IndexedDB), the result's
// bytes and, when not too large, the original's, so that they are shown again after a
// reload, each with its before/after, download, share and remove. Bounded by the section's
// data-max-items and data-max-bytes (index.html): the oldest go first. Videos are not
// kept (a video job stays listed under "Recent jobs" until it expires).
// "Download all (.zip)" zips the history and the results the page shows besides
// (animeganPage.shownResults, from cards.js). Sets animeganPage.history.
"use strict";

(() => {
  const page = (window.animeganPage ??= {});
  const $ = (selector, root = document) => root.querySelector(selector);
  const ui = {
    section: $("#history"),
    title: $("#history-title"),
    about: $("#history-about"),
    list: $("#history-list"),
    downloadAll: $("#download-all"),
    clear: $("#clear-history"),
    template: $("#history-template"),
    status: $("#status"),
    photos: $("#photos"),
  };
  const DB_NAME = "animegan-serve";
  const STORE = "results";
  const LIMITS = { items: Number(ui.section.dataset.maxItems), bytes: Number(ui.section.dataset.maxBytes) };
  // One original never takes more than a tenth of the history's room.
  const MAX_ORIGINAL_BYTES = LIMITS.bytes / 10;
  const ZIP_NAME = "animegan-results.zip";

  const entries = []; // newest first: {record, li, urls}
  let database = null; // a promise of the IDBDatabase, or of null where there is none
  const announce = (text) => { ui.status.textContent = text; };
  const megabytes = (bytes) => `${Math.round(bytes / 2 ** 20)} MB`;

  function openDatabase() {
    return new Promise((resolve) => {
      let opening;
      try {
        opening = indexedDB.open(DB_NAME, 1);
      } catch {
        resolve(null); // no IndexedDB here (a sandboxed frame, storage off)
        return;
      }
      opening.onupgradeneeded = () => {
        opening.result.createObjectStore(STORE, { keyPath: "id", autoIncrement: true });
      };
      opening.onsuccess = () => resolve(opening.result);
      opening.onerror = () => resolve(null);
    });
  }

  // work(store) in one transaction; resolves, once it is committed, to what work returned
  // (a request's result where it returned a request).
  async function transaction(mode, work) {
    const db = await database;
    if (!db) throw new Error("This browser keeps no history.");
    const tx = db.transaction(STORE, mode);
    const done = work(tx.objectStore(STORE));
    return new Promise((resolve, reject) => {
      tx.oncomplete = () => resolve(done instanceof IDBRequest ? done.result : done);
      tx.onerror = tx.onabort = () => reject(tx.error ?? new Error("The history was not saved."));
    });
  }

  async function load() {
    database = openDatabase();
    let records = [];
    try {
      records = await transaction("readonly", (store) => store.getAll());
    } catch {
      // no history in this browser: the page works without one
    }
    records.sort((a, b) => b.id - a.id);
    entries.push(...records.map(render));
    ui.list.replaceChildren(...entries.map((entry) => entry.li));
    sync();
  }

  // shown: {name, style, options, type, blob, original, downloadName, jobId, onKept} of a
  // result the page just showed. Kept if it is a picture that fits: onKept(id) hears its
  // id as soon as it is saved, before it is listed (so "Download all" never zips it twice).
  async function keep(shown) {
    if (shown.type.startsWith("image/") && shown.blob.size <= LIMITS.bytes && await database) {
      const original = shown.original?.type.startsWith("image/") &&
        shown.original.size <= MAX_ORIGINAL_BYTES ? shown.original : null;
      const record = {
        at: Date.now(), name: shown.name, style: shown.style, options: shown.options, type: shown.type,
        result: shown.blob, original, downloadName: shown.downloadName, jobId: shown.jobId ?? null,
        bytes: shown.blob.size + (original?.size ?? 0),
      };
      try {
        const id = record.id = await transaction("readwrite", (store) => store.add(record));
        shown.onKept?.(id);
        const entry = render(record);
        entries.unshift(entry);
        ui.list.prepend(entry.li);
        await prune();
      } catch {
        // not saved (the browser's quota): the result stays on the page
      }
    }
    sync();
  }

  // Drops the oldest past the item count or the byte budget, this tab's or another's.
  async function prune() {
    const dropped = await transaction("readwrite", (store) => {
      const ids = [];
      store.getAll().onsuccess = (event) => {
        let bytes = 0;
        event.target.result.sort((a, b) => b.id - a.id).forEach((record, index) => {
          bytes += record.bytes;
          if (index < LIMITS.items && bytes <= LIMITS.bytes) return;
          store.delete(record.id);
          ids.push(record.id);
        });
      };
      return ids;
    });
    for (const entry of entries.filter(({ record }) => dropped.includes(record.id))) forget(entry);
  }

  function render(record) {
    const li = ui.template.content.firstElementChild.cloneNode(true);
    const entry = { record, li, urls: [URL.createObjectURL(record.result)] };
    li.dataset.id = record.id;
    const name = $(".history-name", li);
    name.id = `history-${record.id}`;
    name.textContent = record.name;
    const after = $(".history-after", li);
    const before = $(".history-before", li);
    after.alt = `${record.name} in the ${record.style} style`;
    after.addEventListener("load", () => {
      const format = record.downloadName.split(".").pop().toUpperCase();
      $(".history-meta", li).textContent = [record.style, `${after.naturalWidth}×${after.naturalHeight} ${format}`,
        record.jobId ? "made as a job" : null].filter(Boolean).join(" · ");
    }, { once: true });
    after.src = entry.urls[0];
    if (record.original) {
      entry.urls.push(URL.createObjectURL(record.original));
      before.alt = `Original: ${record.name}`;
      before.src = entry.urls[1];
      before.hidden = false;
    }
    page.compare.attach(li, {
      frame: $(".history-pair", li), before, after, range: $(".split", li),
      label: `Compare the original and the result: ${record.name}`,
    });
    page.compare.update(li);
    const made = new Date(record.at);
    const time = $("time", li);
    time.dateTime = made.toISOString();
    time.textContent = made.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
    const download = $(".download", li);
    download.href = entry.urls[0];
    download.download = record.downloadName;
    page.share.offer($(".share", li), new File([record.result], record.downloadName, { type: record.type }));
    for (const control of li.querySelectorAll("a, button")) control.setAttribute("aria-describedby", name.id);
    $(".remove", li).addEventListener("click", () => remove(entry));
    return entry;
  }

  function forget(entry) {
    for (const url of entry.urls) URL.revokeObjectURL(url);
    entries.splice(entries.indexOf(entry), 1);
    entry.li.remove();
  }

  async function remove(entry) {
    const index = entries.indexOf(entry);
    try {
      await transaction("readwrite", (store) => store.delete(entry.record.id));
    } catch (error) {
      announce(`Could not remove ${entry.record.name}: ${error.message}`);
      return;
    }
    const hadFocus = entry.li.contains(document.activeElement);
    forget(entry);
    sync();
    if (hadFocus) refocus(entries[Math.min(index, entries.length - 1)]);
    announce(`${entry.record.name}: removed from the history.`);
  }

  async function clear() {
    try {
      await transaction("readwrite", (store) => store.clear());
    } catch (error) {
      announce(`Could not clear the history: ${error.message}`);
      return;
    }
    for (const entry of [...entries]) forget(entry);
    sync();
    refocus(null);
    announce("The history is cleared.");
  }

  // Where the focus goes when what had it is gone: the next item's Remove, else the title.
  function refocus(entry) {
    if (entry) $(".remove", entry.li).focus();
    else (ui.section.hidden ? ui.photos : ui.title).focus();
  }

  function sync() {
    const shown = page.shownResults?.() ?? [];
    ui.section.hidden = !entries.length && !shown.length;
    ui.clear.hidden = !entries.length;
    database?.then((db) => {
      ui.about.textContent = db
        ? `${entries.length} result${entries.length === 1 ? "" : "s"} kept in this browser only: ` +
          `the newest ${LIMITS.items}, up to ${megabytes(LIMITS.bytes)}; older ones make room.`
        : "This browser keeps no history here; Download all takes the results on this page.";
    });
  }

  async function downloadAll() {
    const kept = new Set(entries.map(({ record }) => record.id));
    const files = [
      ...(page.shownResults?.() ?? []).filter((shown) => !kept.has(shown.historyId)),
      ...entries.map(({ record }) => ({ name: record.downloadName, blob: record.result, date: new Date(record.at) })),
    ];
    if (!files.length) {
      announce("There is no result to download yet.");
      return;
    }
    const count = `${files.length} result${files.length > 1 ? "s" : ""}`;
    ui.downloadAll.disabled = true;
    announce(`Making a zip of ${count}…`);
    try {
      const url = URL.createObjectURL(await page.zip.build(files));
      const link = Object.assign(document.createElement("a"), { href: url, download: ZIP_NAME, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000); // the download has read it by then
      announce(`The zip of ${count} is downloading.`);
    } catch (error) {
      announce(`Could not make the zip: ${error.message}`);
    } finally {
      ui.downloadAll.disabled = false;
    }
  }

  ui.downloadAll.addEventListener("click", downloadAll);
  ui.clear.addEventListener("click", clear);
  page.history = { keep, sync };
  load();
})();
