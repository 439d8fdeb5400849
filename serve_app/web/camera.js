// The Camera mode: the camera (getUserMedia, video only) beside its live stylized view,
// through the live WebSocket (/v1/live; its protocol: serve_app/http/live.py). A frame is
// captured as a JPEG at the live size at each new camera frame (and as soon as an answer
// comes), but never while MAX_AHEAD frames await their answer or the socket holds more than
// MAX_BUFFERED bytes unsent: the service keeps only the newest waiting frame, so nothing is
// gained by queueing, here or there. Each answer (a JSON header, then the stylized frame) is drawn on a canvas, counted
// for the fps and timed from its frame's sending. The page's style, strength and colour
// controls change the stream by control messages, without reconnecting. Snapshot sends the
// camera's picture at its full size as an upload (page.upload: app.js), so its card, API
// key and retries are an upload's. Sets animeganPage.camera. A little over the page's other
// files: the camera, the stream and their messages are one state machine, kept together.
"use strict";

(() => {
  const page = (window.animeganPage ??= {});
  const { $, announce } = page.util;
  const { withKey, bearer } = page.api;
  const options = page.options;
  const ui = {
    form: $("#options"),
    tabs: [$("#mode-upload"), $("#mode-camera")],
    start: $("#camera-start"),
    flip: $("#camera-switch"),
    snapshot: $("#camera-snapshot"),
    size: $("#camera-size"),
    message: $("#camera-message"),
    views: $("#camera-views"),
    preview: $("#camera-preview"),
    live: $("#camera-live"),
    fps: $("#camera-fps"),
    latency: $("#camera-latency"),
    style: $("#camera-style"),
    timings: $("#camera-timings"),
    strength: $("#strength"),
    preserveColor: $("#preserve-color"),
  };
  const PROTOCOL = "animegan.live.v1"; // beside "bearer.<key>" when the page has a key
  // The live sizes offered, up to the service's largest live size (/v1/styles: live), its
  // default among them.
  const LIVE_SIZES = [128, 192, 256, 384, 512];
  const FRAME_QUALITY = 0.8; // the frames sent: small and quick to encode
  const SNAPSHOT_QUALITY = 0.92;
  const MAX_BUFFERED = 16 * 1024; // bytes the socket may hold unsent before a capture waits
  // Frames sent and not yet answered (or skipped) at most: one at the model and one waiting
  // there, which a newer one would replace anyway. More would only spend upload bandwidth.
  const MAX_AHEAD = 2;
  const FPS_WINDOW_MS = 2000; // the fps counts the frames shown over about this long
  const FALLBACK_FRAME_MS = 1000 / 30; // without requestVideoFrameCallback: a capture tick
  // Why the service closed a stream, by close code (4000 + the HTTP status): what the page
  // says before the service's reason, and after it.
  const CLOSED = {
    4401: ["The service needs an API key for the camera",
      "Enter it above: the camera starts again once it is accepted."],
    4403: ["The service does not take live streams from this page's site",
      "Its operator lists the sites it serves in cors_origins."],
    4422: ["The service refused the camera's options", "Choose others and start again."],
    4429: ["This API key has as many live streams open as the service allows",
      "Stop one (in another tab?) and start again."],
    4503: ["The service holds as many live streams as it can just now", "Start again in a moment."],
    4408: ["The live stream was closed", "Start the camera again to go on."],
  };

  let live = null; // the running camera and its stream (a session, below); null: stopped
  // The camera asked for, as getUserMedia's video constraints: by facing on a phone
  // ("user": front, "environment": back), by device where cameras face no way (a
  // desktop's webcams). Ideal values: a camera that went away gives way to another.
  let wanted = { facingMode: "user" };
  let shots = 0; // snapshots taken: their names count
  const capture = document.createElement("canvas"); // where frames are drawn to be encoded

  function newSession() {
    return {
      media: null, // the MediaStream
      socket: null,
      opened: false,
      key: null, // the API key the socket offered
      pending: {}, // control changes made while the socket was connecting
      seq: 0, // the next frame's number (the service counts them the same way, from 0)
      sent: new Map(), // seq -> when the frame was sent, until its answer (or a later one)
      header: null, // the header whose frame comes next
      shownSeq: -1,
      shown: [], // when the last frames were shown (for the fps)
      frame: 0, // camera frames presented so far
      captured: -1, // the camera frame last captured
      capturing: false,
      timer: null,
    };
  }

  const say = (text) => {
    ui.message.textContent = text;
    ui.message.hidden = !text;
  };

  // --- the camera --------------------------------------------------------------------

  async function start() {
    if (live) return;
    if (!navigator.mediaDevices?.getUserMedia) {
      say(window.isSecureContext
        ? "This browser gives this page no camera (it has no getUserMedia)."
        : "This browser gives a camera to secure pages only: open this page over https:// " +
          "(or on localhost) to use it.");
      return;
    }
    if (!options.config) {
      say(page.api.prompting() ? "Enter the API key first: the camera starts once it is accepted."
        : "The camera needs the styles first: start it again once they are loaded.");
      return;
    }
    const session = (live = newSession());
    say("");
    showRunning(true);
    try {
      await openCamera(session, wanted);
    } catch (error) {
      if (live === session) stop(cameraError(error));
      return;
    }
    if (live !== session) return; // stopped while the camera opened
    watchFrames(session);
    connect(session);
    offerSwitch();
  }

  // The camera that `video` (constraints) asks for in the preview, instead of any before.
  async function openCamera(session, video) {
    const media = await navigator.mediaDevices.getUserMedia({ video, audio: false });
    if (live !== session) {
      stopTracks(media);
      return;
    }
    stopTracks(session.media);
    session.media = media;
    // A camera facing the user shows as a mirror does (the frames sent are not mirrored).
    const settings = media.getVideoTracks()[0]?.getSettings?.() ?? {};
    ui.views.classList.toggle("mirrored", settings.facingMode !== "environment");
    ui.preview.srcObject = media;
    await ui.preview.play().catch(() => {}); // muted: allowed; a failure shows no frames
    ui.snapshot.disabled = false;
  }

  const stopTracks = (media) => media?.getTracks().forEach((track) => track.stop());

  function cameraError(error) {
    switch (error?.name) {
      case "NotAllowedError":
      case "SecurityError":
        return "The camera permission was denied: allow the camera for this site in the " +
          "browser (the icon in the address bar, or its site settings), then start again.";
      case "NotFoundError":
      case "OverconstrainedError":
        return "No camera was found.";
      case "NotReadableError":
      case "AbortError":
        return "The camera could not be started: another application may be using it.";
      default:
        return `The camera could not be started: ${error?.message || error}`;
    }
  }

  // Offered where there is more than one camera (a phone's front and back, two webcams).
  async function offerSwitch() {
    try {
      const devices = await navigator.mediaDevices.enumerateDevices();
      ui.flip.hidden = !live || devices.filter((d) => d.kind === "videoinput").length < 2;
    } catch {
      ui.flip.hidden = true;
    }
  }

  // Another camera: the one facing the other way where the camera says which way it
  // faces (a phone: asked for by facing, so the browser picks that side's main lens),
  // else, or when none faces the other way, the next in the browser's list.
  async function switchCamera() {
    const session = live;
    if (!session?.media) return;
    ui.flip.disabled = true;
    const before = wanted;
    try {
      const others = await otherCameras(session.media.getVideoTracks()[0]?.getSettings?.() ?? {});
      if (live !== session) return;
      if (!others.length) {
        say("There is no other camera to switch to.");
        return;
      }
      stopTracks(session.media); // many phones open one camera at a time
      session.media = null;
      for (const video of others) {
        try {
          await openCamera(session, video);
          if (live !== session) return; // stopped meanwhile: openCamera let it go
          const { facingMode, deviceId } = session.media.getVideoTracks()[0]?.getSettings?.() ?? {};
          wanted = video.facingMode
            ? { facingMode: facingMode ?? video.facingMode.exact }
            : { deviceId: deviceId ?? video.deviceId.exact };
          announce(cameraName(session.media, facingMode));
          return;
        } catch {
          if (live !== session) return;
        }
      }
      say("There is no other camera to switch to.");
      try {
        await openCamera(session, before);
      } catch (error) {
        if (live === session) stop(cameraError(error));
      }
    } finally {
      ui.flip.disabled = false;
    }
  }

  // The constraints to try, in order, for a camera other than the one of `current` (its
  // settings): the other facing, if it has one; the next device in the list.
  async function otherCameras(current) {
    const others = [];
    if (current.facingMode === "user" || current.facingMode === "environment") {
      const other = current.facingMode === "user" ? "environment" : "user";
      others.push({ facingMode: { exact: other } });
    }
    const devices = await navigator.mediaDevices.enumerateDevices().catch(() => []);
    const ids = devices.filter((d) => d.kind === "videoinput").map((d) => d.deviceId);
    const next = ids[(ids.indexOf(current.deviceId) + 1) % ids.length];
    if (next && next !== current.deviceId) others.push({ deviceId: { exact: next } });
    return others;
  }

  function cameraName(media, facingMode) {
    if (facingMode === "user" || facingMode === "environment") {
      return `The ${facingMode === "user" ? "front" : "back"} camera is on.`;
    }
    const label = media.getVideoTracks()[0]?.label;
    return label ? `The camera “${label}” is on.` : "The next camera is on.";
  }

  // Counts the camera's frames (each one may be captured once) and captures at that rate.
  function watchFrames(session) {
    const video = ui.preview;
    if (!video.requestVideoFrameCallback) {
      session.timer = setInterval(() => {
        session.frame += 1;
        send(session);
      }, FALLBACK_FRAME_MS);
      return;
    }
    const presented = () => {
      if (live !== session) return;
      session.frame += 1;
      send(session);
      video.requestVideoFrameCallback(presented);
    };
    video.requestVideoFrameCallback(presented);
  }

  function stop(message = "") {
    const session = live;
    live = null;
    if (session) {
      clearInterval(session.timer);
      stopTracks(session.media);
      const { socket } = session;
      // Closed once open: closing a connecting socket makes the browser log an error.
      if (socket?.readyState === WebSocket.CONNECTING) {
        socket.addEventListener("open", () => socket.close(1000, "stopped"), { once: true });
      } else if (socket?.readyState === WebSocket.OPEN) {
        socket.close(1000, "stopped");
      }
    }
    ui.preview.srcObject = null;
    ui.fps.textContent = "0 fps";
    showRunning(false);
    say(message);
  }

  function showRunning(running) {
    ui.start.textContent = running ? "Stop the camera" : "Start the camera";
    ui.snapshot.disabled = !running || !live?.media;
    if (!running) ui.flip.hidden = true;
  }

  // --- the stream --------------------------------------------------------------------

  function connect(session) {
    const { style, strength, preserve_color } = options.current();
    const query = new URLSearchParams({ style, strength, preserve_color, size: ui.size.value });
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const key = page.api.key();
    let socket;
    try {
      socket = new WebSocket(`${scheme}//${location.host}/v1/live?${query}`,
        key ? [PROTOCOL, `bearer.${key}`] : [PROTOCOL]);
    } catch (error) { // a key with characters a subprotocol cannot carry
      stop(`Could not open the live stream: ${error.message}`);
      return;
    }
    Object.assign(session, { socket, key });
    socket.addEventListener("open", () => {
      if (live !== session) return;
      session.opened = true;
      if (Object.keys(session.pending).length) socket.send(JSON.stringify(session.pending));
      session.pending = {};
      send(session);
    });
    socket.addEventListener("message", (event) => {
      if (live === session) heard(session, event.data);
    });
    socket.addEventListener("close", (event) => {
      if (live === session) closed(session, event);
    });
  }

  // The newest camera frame, at the live size, unless one is being encoded, this camera
  // frame went already, or the socket has not sent the last ones yet.
  function send(session) {
    const { socket } = session;
    const video = ui.preview;
    if (live !== session || !session.opened || session.capturing || !session.media) return;
    if (session.frame === session.captured || !video.videoWidth) return;
    if (socket.bufferedAmount > MAX_BUFFERED || session.sent.size >= MAX_AHEAD) return;
    session.captured = session.frame;
    session.capturing = true;
    const scale = Math.min(1, Number(ui.size.value) / Math.max(video.videoWidth, video.videoHeight));
    capture.width = Math.max(1, Math.round(video.videoWidth * scale));
    capture.height = Math.max(1, Math.round(video.videoHeight * scale));
    capture.getContext("2d").drawImage(video, 0, 0, capture.width, capture.height);
    capture.toBlob((blob) => {
      session.capturing = false;
      if (!blob || live !== session || socket.readyState !== WebSocket.OPEN) return;
      socket.send(blob);
      session.sent.set(session.seq, performance.now());
      session.seq += 1;
    }, "image/jpeg", FRAME_QUALITY);
  }

  // A message from the service: a frame's header (its frame comes next), the frame, a
  // frame's or a control message's error, or the options now in force.
  function heard(session, data) {
    if (typeof data !== "string") {
      const { header } = session;
      session.header = null;
      if (header) show(session, header, data);
      return;
    }
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // not this protocol's: nothing to do with it
    }
    const sentAt = message.seq == null ? undefined : session.sent.get(message.seq);
    if (message.seq != null) resolve(session, message.seq);
    if (message.error) {
      const frame = message.seq != null;
      say(`${frame ? "A frame was refused" : "The change was refused"}: ${message.error.message}`);
      if (frame) send(session);
    } else if (!message.options) {
      session.header = { ...message, sentAt };
    }
  }

  // The frames up to seq have their answer (an earlier one unanswered was skipped).
  function resolve(session, seq) {
    for (const sent of session.sent.keys()) if (sent <= seq) session.sent.delete(sent);
  }

  async function show(session, header, blob) {
    let bitmap;
    try {
      bitmap = await createImageBitmap(blob);
    } catch {
      return; // not a picture this browser reads: the next frame may be
    }
    if (live !== session || header.seq <= session.shownSeq) {
      bitmap.close(); // stopped meanwhile, or a newer frame is shown already
      return;
    }
    session.shownSeq = header.seq;
    const canvas = ui.live;
    if (canvas.width !== bitmap.width) canvas.width = bitmap.width; // a resize clears it
    if (canvas.height !== bitmap.height) canvas.height = bitmap.height;
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    const now = performance.now();
    const { sentAt } = header;
    const { shown } = session;
    shown.push(now);
    while (shown.length > 2 && shown[0] < now - FPS_WINDOW_MS) shown.shift();
    if (ui.message.textContent.startsWith("A frame was refused")) say("");
    report(header, shown, sentAt === undefined ? null : now - sentAt);
    send(session);
  }

  function report(header, shown, latency) {
    const span = shown[shown.length - 1] - shown[0];
    const fps = shown.length > 1 && span > 0 ? ((shown.length - 1) * 1000) / span : 0;
    ui.fps.textContent = `${fps.toFixed(1)} fps`;
    if (latency !== null) ui.latency.textContent = `latency ${Math.round(latency)} ms`;
    ui.style.textContent = header.style;
    const t = header.timings_ms ?? {};
    const ms = (value) => Math.round(value ?? 0);
    ui.timings.textContent = `· service: wait ${ms(t.wait)}, decode ${ms(t.decode)}, ` +
      `queue ${ms(t.queue)}, model ${ms(t.inference)}, encode ${ms(t.encode)} ms` +
      (header.skipped ? ` · ${header.skipped} frames skipped` : "");
  }

  function closed(session, { code, reason }) {
    const [why, next] = CLOSED[code] ?? (session.opened
      ? [`The live stream ended (code ${code})`, "Start the camera again to go on."]
      : ["Could not open the live stream: the service did not answer, or has no live camera", ""]);
    stop(`${why}${reason ? ` (${reason.replace(/\.$/, "")})` : ""}. ${next}`.trim());
    if (code === 4401) askForKey(session.key);
  }

  // The key was refused (or none was given): the page's key form asks for one, and once a
  // new key is accepted the camera starts again, if it is still wanted.
  async function askForKey(used) {
    try {
      await withKey((key) => fetch("/v1/styles", { headers: { Accept: "application/json", ...bearer(key) } }));
    } catch {
      return; // unreachable: the message says what went wrong
    }
    if (page.api.key() !== used && cameraShown()) start();
  }

  // A control message: the changed options apply to the next frames (sent on opening
  // when the socket is still connecting).
  function change(changes) {
    const socket = live?.socket;
    if (!socket) return;
    if (live.opened) socket.send(JSON.stringify(changes));
    else Object.assign(live.pending, changes);
  }

  ui.form.addEventListener("change", ({ target }) => {
    if (target.name === "style" && target.checked) change({ style: target.value });
    else if (target === ui.strength) change({ strength: Number(target.value) });
    else if (target === ui.preserveColor) change({ preserve_color: target.checked });
    else if (target === ui.size) change({ size: Number(target.value) });
  });

  // --- snapshot ----------------------------------------------------------------------

  function snapshot() {
    const video = ui.preview;
    if (!live?.media || !video.videoWidth) return;
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => {
      if (!blob) {
        say("The snapshot could not be taken.");
        return;
      }
      shots += 1;
      page.upload([new File([blob], `camera-${shots}.jpg`, { type: "image/jpeg" })]);
    }, "image/jpeg", SNAPSHOT_QUALITY);
  }

  // --- the mode tabs -----------------------------------------------------------------

  const cameraShown = () => ui.tabs[1].getAttribute("aria-selected") === "true";

  function selectTab(tab, focus = false) {
    for (const each of ui.tabs) {
      const chosen = each === tab;
      each.setAttribute("aria-selected", String(chosen));
      each.tabIndex = chosen ? 0 : -1;
      $(`#${each.getAttribute("aria-controls")}`).hidden = !chosen;
    }
    if (focus) tab.focus();
    if (tab === ui.tabs[1]) {
      offerSizes();
      start();
    } else stop();
  }

  // The live sizes up to the service's largest live size: its default preselected, or the
  // size someone chose, where it fits.
  let sizeChosen = false;
  ui.size.addEventListener("change", () => { sizeChosen = true; });
  function offerSizes() {
    if (!options.config) return;
    const { max_size: largest, default_size: preferred } = options.config.live;
    const sizes = LIVE_SIZES.filter((size) => size <= largest);
    if (!sizes.length) sizes.push(largest);
    if (!sizes.includes(preferred)) sizes.push(preferred);
    sizes.sort((a, b) => a - b);
    const wanted = sizeChosen ? [Number(ui.size.value), preferred] : [preferred];
    const keep = wanted.find((size) => sizes.includes(size));
    ui.size.replaceChildren(...sizes.map((size) => new Option(String(size), String(size))));
    ui.size.value = String(keep ?? sizes.at(-1));
  }

  // A page left for another tab or app lets go of the camera (its light goes off, no frame
  // is sent for nothing) and takes it again when it is back, if it was running.
  let pausedWhileHidden = false;
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden" && live) {
      pausedWhileHidden = true;
      stop("The camera is paused while the page is hidden.");
    } else if (document.visibilityState === "visible" && pausedWhileHidden) {
      pausedWhileHidden = false;
      if (ui.tabs[1].getAttribute("aria-selected") === "true") start();
    }
  });

  // Opened before the settings came (they wait for an API key): it starts once they do.
  options.onLoaded(() => {
    if (ui.tabs[1].getAttribute("aria-selected") === "true" && !live) {
      offerSizes();
      start();
    }
  });

  for (const tab of ui.tabs) {
    tab.addEventListener("click", () => {
      if (tab.getAttribute("aria-selected") !== "true") selectTab(tab);
    });
    tab.addEventListener("keydown", (event) => {
      const at = ui.tabs.indexOf(tab);
      const to = { ArrowLeft: at - 1, ArrowRight: at + 1, Home: 0, End: ui.tabs.length - 1 }[event.key];
      if (to === undefined) return;
      event.preventDefault();
      const next = ui.tabs[(to + ui.tabs.length) % ui.tabs.length];
      if (next !== tab) selectTab(next, true);
    });
  }

  ui.start.addEventListener("click", () => (live ? stop() : start()));
  ui.flip.addEventListener("click", switchCamera);
  ui.snapshot.addEventListener("click", snapshot);

  page.camera = { stop };
})();
