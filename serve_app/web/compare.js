// Before and after, overlaid: the original on top, clipped at a divider the user drags
// across the picture (or moves with the slider under it, by keyboard too), the stylized
// picture beneath. Used by the result cards and the history's items; the CSS lays each
// out (style.css: "before/after"). Sets animeganPage.compare.
//
// The root element gets the class "comparing" while the two pictures can be compared
// (both shown, loaded, and of one shape: a face cropped out of a photo is not its
// original's shape, and stays side by side), and the custom property --split (a %).
"use strict";

(() => {
  const page = (window.animeganPage ??= {});
  const SAME_SHAPE = 0.02; // aspect ratios this close (relative) overlay exactly enough
  const START = 50;
  const parts = new WeakMap(); // root -> {frame, before, after, range}

  const loaded = (img) => img.complete && img.naturalWidth > 0;
  const ratio = (img) => img.naturalWidth / img.naturalHeight;

  function set(root, value) {
    const { range } = parts.get(root);
    const split = Math.min(100, Math.max(0, Math.round(value)));
    range.value = String(split);
    range.setAttribute("aria-valuetext", `${split}% original, ${100 - split}% stylized`);
    root.style.setProperty("--split", `${split}%`);
  }

  // frame: the element the pointer drags on; before, after: the two <img>s; range: the
  // slider (its accessible name: `label`).
  function attach(root, { frame, before, after, range, label }) {
    parts.set(root, { frame, before, after, range });
    range.setAttribute("aria-label", label);
    set(root, START);
    range.addEventListener("input", () => set(root, Number(range.value)));
    const follow = (event) => {
      const box = after.getBoundingClientRect();
      if (box.width) set(root, (100 * (event.clientX - box.left)) / box.width);
    };
    frame.addEventListener("pointerdown", (event) => {
      // Not where the slider is hidden (a phone's stacked layout), nor a secondary button.
      if (!root.classList.contains("comparing") || !range.offsetParent || event.button !== 0) return;
      event.preventDefault(); // no image drag, no text selection
      frame.setPointerCapture(event.pointerId);
      follow(event);
      const move = (moved) => follow(moved);
      frame.addEventListener("pointermove", move);
      frame.addEventListener("lostpointercapture", () => {
        frame.removeEventListener("pointermove", move);
      }, { once: true });
    });
  }

  // Compares the pictures if it can (see the top), whenever either has loaded.
  function update(root) {
    const { before, after } = parts.get(root);
    const shown = !before.hidden && !after.hidden && before.getAttribute("src") && after.getAttribute("src");
    for (const img of [before, after]) {
      if (shown && !loaded(img)) img.addEventListener("load", () => update(root), { once: true });
    }
    const ready = shown && loaded(before) && loaded(after);
    const same = ready && Math.abs(ratio(before) / ratio(after) - 1) <= SAME_SHAPE;
    root.classList.toggle("comparing", Boolean(same));
  }

  function reset(root) {
    root.classList.remove("comparing");
    set(root, START);
  }

  page.compare = { attach, update, reset };
})();
