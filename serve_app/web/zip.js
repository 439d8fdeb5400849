// A zip archive made in the browser, with no library: every entry stored as it is (no
// compression: the results are PNG, JPEG, WebP, GIF or video, compressed already), each
// with its CRC-32, a local header, the central directory and the end record (APPNOTE
// 6.3). Names are UTF-8 (general purpose flag bit 11). No zip64: the page's history is
// bounded far below its 4 GB and 65,535 entries. Sets animeganPage.zip.
"use strict";

(() => {
  const page = (window.animeganPage ??= {});
  const UTF8_NAMES = 0x0800;
  const VERSION = 20; // 2.0: what stored entries with a directory need
  const MAX_BYTES = 0xffffffff;
  const MAX_ENTRIES = 0xffff;

  const CRC_TABLE = (() => {
    const table = new Uint32Array(256);
    for (let n = 0; n < 256; n += 1) {
      let c = n;
      for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
    return table;
  })();

  function crc32(bytes) {
    let crc = 0xffffffff;
    for (let i = 0; i < bytes.length; i += 1) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
    return (crc ^ 0xffffffff) >>> 0;
  }

  // MS-DOS time and date, local time, two-second steps; 1980 is the earliest it holds.
  function dosTime(date) {
    const year = Math.max(1980, date.getFullYear());
    return {
      time: (date.getHours() << 11) | (date.getMinutes() << 5) | (date.getSeconds() >> 1),
      date: ((year - 1980) << 9) | ((date.getMonth() + 1) << 5) | date.getDate(),
    };
  }

  // A name safe to extract anywhere: no directories, no characters Windows refuses.
  const safeName = (name) => name.replace(/[\\/:*?"<>|\x00-\x1f]/g, "_").replace(/^\.+/, "_") || "result";

  // "photo-alpha.png", then "photo-alpha-2.png", ...: unique whatever the case (Windows).
  function uniqueNames(names) {
    const taken = new Set();
    return names.map((name) => {
      const safe = safeName(name);
      const dot = safe.lastIndexOf(".");
      const [stem, extension] = dot > 0 ? [safe.slice(0, dot), safe.slice(dot)] : [safe, ""];
      let candidate = safe;
      for (let n = 2; taken.has(candidate.toLowerCase()); n += 1) candidate = `${stem}-${n}${extension}`;
      taken.add(candidate.toLowerCase());
      return candidate;
    });
  }

  // The 30-byte local header (its name follows) or the 46-byte central one.
  function header(entry, central) {
    const view = new DataView(new ArrayBuffer(central ? 46 : 30));
    const fields = central
      ? [[0, 0x02014b50, 4], [4, VERSION, 2], [6, VERSION, 2], [8, UTF8_NAMES, 2], [10, 0, 2]]
      : [[0, 0x04034b50, 4], [4, VERSION, 2], [6, UTF8_NAMES, 2], [8, 0, 2]];
    const at = central ? 12 : 10; // the fields from the time on, the same in both
    fields.push([at, entry.time, 2], [at + 2, entry.date, 2], [at + 4, entry.crc, 4],
      [at + 8, entry.size, 4], [at + 12, entry.size, 4], [at + 16, entry.name.length, 2],
      [at + 18, 0, 2]); // no extra field
    // The central record's comment, disk, attributes (all 0) and the local header's offset.
    if (central) fields.push([42, entry.offset, 4]);
    for (const [offset, value, width] of fields) {
      if (width === 4) view.setUint32(offset, value, true);
      else view.setUint16(offset, value, true);
    }
    return new Uint8Array(view.buffer);
  }

  function endRecord(count, directorySize, directoryOffset) {
    const view = new DataView(new ArrayBuffer(22));
    view.setUint32(0, 0x06054b50, true);
    view.setUint16(8, count, true); // entries on this disk (disks 0 and 0 before it)
    view.setUint16(10, count, true);
    view.setUint32(12, directorySize, true);
    view.setUint32(16, directoryOffset, true);
    return new Uint8Array(view.buffer); // no comment
  }

  // files: [{name, blob, date?}] -> a Blob of type application/zip. Names are made safe
  // and unique (see uniqueNames); the entries' bytes are read once each, for their CRC.
  async function build(files) {
    if (files.length > MAX_ENTRIES) throw new Error("Too many files for one zip.");
    const encoder = new TextEncoder();
    const names = uniqueNames(files.map((file) => file.name));
    const parts = [];
    const entries = [];
    let offset = 0;
    for (const [i, file] of files.entries()) {
      const bytes = new Uint8Array(await file.blob.arrayBuffer());
      const entry = {
        name: encoder.encode(names[i]), crc: crc32(bytes), size: bytes.length, offset,
        ...dosTime(file.date ?? new Date()),
      };
      const local = header(entry, false);
      parts.push(local, entry.name, file.blob);
      entries.push(entry);
      offset += local.length + entry.name.length + bytes.length;
      if (offset > MAX_BYTES) throw new Error("Too much for one zip (4 GB).");
    }
    let directorySize = 0;
    for (const entry of entries) {
      const central = header(entry, true);
      parts.push(central, entry.name);
      directorySize += central.length + entry.name.length;
    }
    parts.push(endRecord(entries.length, directorySize, offset));
    return new Blob(parts, { type: "application/zip" });
  }

  page.zip = { build, crc32, uniqueNames };
})();
