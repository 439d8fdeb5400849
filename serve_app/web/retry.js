// A call the service answers 503 (busy) or 429 (too many requests) with a Retry-After
// header is sent again after that wait, a few times, while the page counts the wait down
// where the user sees it. The policy is the Python client's (serve_app/client/wire.py):
// at most 3 retries, each wait at most 30 s; past that, the caller shows the answer as
// any other error. Sets animeganPage.retrying(send, onBusy).
"use strict";

(() => {
  const page = (window.animeganPage ??= {});
  const RETRIES = 3;
  const MAX_WAIT_S = 30;
  const BUSY = { 503: "The service is busy", 429: "Too many requests just now" };

  const header = (result, name) => (result instanceof XMLHttpRequest
    ? result.getResponseHeader(name) : result.headers?.get(name) ?? null);

  // Retry-After: delay-seconds or an HTTP date; null when absent or unreadable.
  function retryAfterS(value) {
    if (!value || !value.trim()) return null;
    if (/^\s*\d+(\.\d+)?\s*$/.test(value)) return Number(value);
    const when = Date.parse(value);
    return Number.isNaN(when) ? null : Math.max(0, (when - Date.now()) / 1000);
  }

  // The wait before sending again, in seconds; null: the answer is final.
  function waitS(result, retriesDone) {
    if (!(result.status in BUSY) || retriesDone >= RETRIES) return null;
    const asked = retryAfterS(header(result, "Retry-After"));
    return asked === null ? null : Math.min(asked, MAX_WAIT_S);
  }

  // Resolves once `seconds` have passed, telling show() the whole seconds left at each change.
  function countdown(seconds, show) {
    const end = performance.now() + seconds * 1000;
    return new Promise((resolve) => {
      const step = () => {
        const left = end - performance.now();
        if (left <= 0) {
          resolve();
          return;
        }
        const shown = Math.ceil(left / 1000);
        show(shown);
        setTimeout(step, left - (shown - 1) * 1000); // when the number next changes
      };
      step();
    });
  }

  // send(): one call, resolving to a fetch Response or a finished XMLHttpRequest. While a
  // retry waits, onBusy(line, first) is told each second ("The service is busy — retrying
  // in 3 s…"; `first` on a wait's first line), then onBusy(null) just before the retry.
  async function retrying(send, onBusy) {
    for (let retries = 0; ; retries += 1) {
      const result = await send();
      const wait = waitS(result, retries);
      if (wait === null) return result;
      let first = true;
      await countdown(wait, (left) => {
        onBusy?.(`${BUSY[result.status]} — retrying in ${left} s… (retry ${retries + 1} of ${RETRIES})`, first);
        first = false;
      });
      onBusy?.(null, false);
    }
  }

  page.retrying = retrying;
})();
