// The API key and the calls that need it: the key form, the key kept in sessionStorage,
// the Authorization header (bearer), withKey (a call made again once a key is given after a
// 401, and after a 503 or 429's wait: retry.js), and the API's JSON errors. Tells the recent
// jobs list (recent.js) when a key is refused, accepted or forgotten, through on(). Sets
// animeganPage.api.
"use strict";

(() => {
  const page = (window.animeganPage ??= {});
  const { $, announce } = page.util;
  const ui = {
    photos: $("#photos"),
    status: $("#status"),
    keyForm: $("#key-form"),
    keyInput: $("#api-key"),
    keyMessage: $("#key-message"),
    keyInUse: $("#key-in-use"),
    forgetKey: $("#forget-key"),
  };
  const KEY_ITEM = "animegan-serve.api-key";
  const hooks = { refused() {}, accepted() {}, forgotten() {} };

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
    hooks.refused(); // the recent jobs listed with that key: not shown without it
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
    hooks.accepted(); // this key's jobs listed (recent.js)
  }

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
    hooks.forgotten(); // the key's jobs go; an open service's list stays (recent.js)
    checkAccess(); // the service's 401 brings the prompt back, with its own message
  });

  function checkAccess() {
    const send = (key) => fetch("/v1/styles", { headers: { Accept: "application/json", ...bearer(key) } });
    withKey(send).catch(() => {}); // unreachable: the next real call will say so
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

  page.api = {
    withKey, bearer, errorOf, errorText,
    key: () => apiKey,
    prompting: () => !ui.keyForm.hidden, // the key form is shown: calls wait for a key
    on(name, fn) { hooks[name] = fn; },
  };
})();
