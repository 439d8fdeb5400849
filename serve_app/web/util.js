// The page's small shared pieces: the query helper, the status line, number and badge
// formatting, and the result file extensions by media type. Loaded before the scripts that
// use it (api.js and those after it in index.html). Sets animeganPage.util.
"use strict";

(() => {
  const page = (window.animeganPage ??= {});
  const $ = (selector, root = document) => root.querySelector(selector);
  const status = $("#status");
  // A result's file extension, by its media type (parameters such as "codecs" cut off).
  const EXTENSIONS = {
    "image/png": "png", "image/apng": "png", "image/jpeg": "jpg", "image/webp": "webp",
    "image/gif": "gif", "video/mp4": "mp4", "video/webm": "webm", "video/x-matroska": "mkv",
    "video/matroska": "mkv", "video/quicktime": "mov",
  };
  const RANDOM_BADGE = "random weights — meaningless picture";

  const announce = (text) => { status.textContent = text; };
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

  const mediaType = (type) => (type || "").split(";")[0].trim().toLowerCase();

  page.util = { $, announce, seconds, megabytes, badge, mediaType, EXTENSIONS, RANDOM_BADGE };
})();
