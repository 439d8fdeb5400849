// Whether a picture is animated, read from the file's first bytes: an animation keeps its
// own format (app.js: prepare), and only an animation may be sent on to a job when
// /v1/stylize answers use_jobs. Sets animeganPage.animated(file) -> Promise<boolean>.
"use strict";

(() => {
  const page = (window.animeganPage ??= {});

  const GIF_SNIFF_BYTES = 4 * 2 ** 20; // a GIF's second frame starts well within this
  const PNG_SNIFF_BYTES = 2 ** 20; // APNG's acTL comes before the first IDAT

  async function animated(file) {
    try {
      const head = new Uint8Array(await file.slice(0, 32).arrayBuffer());
      const text = (from, to) => String.fromCharCode(...head.subarray(from, to));
      if (text(0, 4) === "GIF8") {
        const bytes = new Uint8Array(await file.slice(0, GIF_SNIFF_BYTES).arrayBuffer());
        return gifFrames(bytes, 2) > 1;
      }
      if (text(0, 4) === "RIFF" && text(8, 16) === "WEBPVP8X") {
        return Boolean(head[20] & 0x02); // the extended header's animation flag
      }
      if (text(1, 4) === "PNG") {
        return apng(new Uint8Array(await file.slice(0, PNG_SNIFF_BYTES).arrayBuffer()));
      }
    } catch {
      // unreadable here: the service judges it as a picture
    }
    return false;
  }

  // Counts a GIF's image descriptors (up to `enough`), skipping colour tables and the
  // data sub-blocks of images and extensions.
  function gifFrames(bytes, enough) {
    if (bytes.length < 13) return 0;
    let pos = 13;
    if (bytes[10] & 0x80) pos += 3 * 2 ** ((bytes[10] & 7) + 1); // the global colour table
    const skipSubBlocks = () => {
      while (pos < bytes.length && bytes[pos]) pos += bytes[pos] + 1;
      pos += 1; // the terminator
    };
    let frames = 0;
    while (pos < bytes.length && frames < enough) {
      if (bytes[pos] === 0x21) { // an extension: its label, then sub-blocks
        pos += 2;
        skipSubBlocks();
      } else if (bytes[pos] === 0x2c) { // an image: descriptor, local table, LZW data
        frames += 1;
        const packed = bytes[pos + 9];
        pos += 10;
        if (packed & 0x80) pos += 3 * 2 ** ((packed & 7) + 1);
        pos += 1; // the LZW minimum code size
        skipSubBlocks();
      } else {
        break; // the trailer, or bytes that are no GIF block
      }
    }
    return frames;
  }

  function apng(bytes) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let pos = 8; pos + 8 <= bytes.length;) {
      const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
      if (type === "acTL") return true;
      if (type === "IDAT" || type === "IEND") return false;
      pos += 12 + view.getUint32(pos); // length, type, data, CRC
    }
    return false;
  }

  page.animated = animated;
})();
