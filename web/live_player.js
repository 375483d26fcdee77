// The Live tab's player and microphone (the `js_on_load` of a gr.HTML in app.py; Gradio runs it with `element`,
// `props` and `watch` defined). The live session is one fragmented MP4 in chunks, each {session, seq, mime, final,
// end, reason, reduced} and its bytes; they are appended to a MediaSource as they arrive, so the first frames play
// about 0.1 s after they reach the page. Gradio's own streaming video goes through an HLS player instead, which
// re-encodes each segment on the server and buffers in the page: about a second more. Before any session this
// component's value is {microphone, video} (addresses): the page opens its video socket at once and keeps it open,
// and the chunks come down it (see "The video socket" below), skipping Gradio's queue and event stream; the session's
// Gradio event then yields each chunk's header as the value, with `via` (the socket it went down), or, while no
// socket is open, with the chunk itself as `data` (base64). While Gradio's microphone records (its Record and Stop
// buttons), this page sends the voice to the microphone address itself (see "The microphone" below).
const video = element.querySelector("video");
const hint = element.querySelector(".teller-live-hint");
const label = element.querySelector(".teller-live-label");
const MediaSourceType = window.ManagedMediaSource || window.MediaSource; // Safari on iPhone has only the first
// Playback stays close to the newest frame. Chunks come every 0.2 s (a slice of the model's frames), so the player
// keeps that and a margin in hand (TARGET_BEHIND_SECONDS) and plays a little faster while it has more: after a stall
// (the server caught up in one larger chunk, or the network hiccuped) it drifts back to the voice within a few
// seconds instead of lagging behind it for the rest of the session; far behind, it skips ahead. Once the speech has
// ended (chunks marked `final`, the video of the last words) nothing is skipped or hurried: it all plays, then the
// player says the session ended.
const TARGET_BEHIND_SECONDS = 0.3;
const CATCH_UP_RATE = 1.25; // the browser keeps the voice's pitch (preservesPitch)
const MAX_BEHIND_SECONDS = 1.0;
const HOLE_SECONDS = 0.05; // playback this close to the end of a buffered range, with more after a hole, is stuck

let session = null; // the live session whose chunks are playing
const over = new Set(); // earlier sessions: a late chunk of one is not a new session
let source = null;
let buffer = null;
let pending = []; // chunks waiting for the SourceBuffer
let ending = false; // the stream's last chunk has come
let final = false; // the speech has ended: play every frame that comes
let reason = null; // why the session ended, when the visitor did not press Stop
let expected = 0; // the next chunk's number
// Chunks (and headers of chunks sent down a socket) that came before the one expected, by number: a chunk may come
// down the socket before an earlier one sent through Gradio, when the socket (re)opened mid-session.
let early = new Map();
let gradioNext = 0; // one past the newest chunk number Gradio's event gave: Gradio gives them in order

function decode(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

function showHint(text) {
  hint.textContent = text;
  hint.hidden = !text;
}

function start(value) {
  if (session) over.add(session);
  session = value.session;
  pending = [];
  early = new Map();
  expected = 0;
  gradioNext = 0;
  ending = false;
  final = false;
  reason = null;
  hint.classList.remove("teller-live-ended");
  label.textContent = "Live";
  showHint("");
  buffer = null;
  if (!MediaSourceType || !MediaSourceType.isTypeSupported(value.mime)) {
    showHint("This browser cannot play the live video (no Media Source Extensions for H.264 + AAC).");
    return;
  }
  source = new MediaSourceType();
  video.disableRemotePlayback = true; // ManagedMediaSource plays only with remote playback off
  const url = URL.createObjectURL(source);
  video.src = url;
  const opened = source;
  opened.addEventListener("sourceopen", () => {
    URL.revokeObjectURL(url); // attached now; revoking lets an ended session's buffers be freed
    if (opened !== source) return; // a newer session took over meanwhile
    buffer = source.addSourceBuffer(value.mime);
    buffer.addEventListener("updateend", () => {
      play();
      feed();
    });
    feed();
  }, { once: true });
}

function feed() {
  if (!buffer || buffer.updating) return;
  if (pending.length) {
    try {
      buffer.appendBuffer(pending.shift());
    } catch (error) {
      console.error("teller: cannot append the live video", error);
      showHint("The live video stopped: please press Record again.");
    }
  } else if (ending && source.readyState === "open") {
    source.endOfStream();
  }
}

function play() {
  const ranges = video.buffered;
  if (!ranges.length) return;
  const newest = ranges.end(ranges.length - 1);
  const behind = newest - video.currentTime;
  if ((behind > MAX_BEHIND_SECONDS && !final) || video.currentTime < ranges.start(0)) {
    video.currentTime = Math.max(ranges.start(ranges.length - 1), newest - TARGET_BEHIND_SECONDS);
  }
  // A chunk that never came (its socket dropped) leaves a hole, where playback would stop for good once the speech
  // has ended (nothing is skipped then): play on from the far side of it.
  for (let i = 0; i + 1 < ranges.length; i++) {
    if (video.currentTime >= ranges.end(i) - HOLE_SECONDS && video.currentTime < ranges.start(i + 1)) {
      video.currentTime = ranges.start(i + 1);
    }
  }
  keepPace();
  if (video.paused && !video.ended) {
    // Pressing Record lets the page play sound; should the browser still refuse, play muted and say so.
    video.play().catch(() => {
      video.muted = true;
      showHint("Muted by the browser: click the video for sound.");
      video.play().catch(() => {});
    });
  }
}

// A little faster while more than 1.5 × the target is in hand, normal speed again once it is back under the target.
function keepPace() {
  const ranges = video.buffered;
  if (!ranges.length || final) {
    video.playbackRate = 1;
    return;
  }
  const behind = ranges.end(ranges.length - 1) - video.currentTime;
  if (behind > 1.5 * TARGET_BEHIND_SECONDS) video.playbackRate = CATCH_UP_RATE;
  else if (behind < TARGET_BEHIND_SECONDS) video.playbackRate = 1;
}
video.addEventListener("timeupdate", keepPace);
video.addEventListener("waiting", play); // out of video: at the end of what came, or at a hole

video.addEventListener("click", () => {
  if (video.muted) {
    video.muted = false;
    showHint("");
  }
});
video.addEventListener("ended", () => {
  if (!ending) return;
  hint.classList.add("teller-live-ended");
  label.textContent = "Ended";
  showHint(reason ? `Session ended: ${reason}.` : "Session ended.");
});

// A session that ended on its own (its time limit) takes no more speech: stop the microphone, as its Stop button
// does, rather than record speech nobody will animate. (The server cannot: Gradio 6.31's microphone ignores it.)
function stopMicrophone() {
  const stop = document.querySelector("#live-mic button.stop-button");
  if (stop) stop.click();
}
video.addEventListener("playing", () => {
  if (!video.muted) showHint("");
});

// A chunk's header and its bytes (null: it went down the video socket named `via`), from either way it came.
function receive(value, bytes, fromGradio) {
  if (value.session !== session) {
    if (over.has(value.session)) return; // a late chunk of an earlier session
    start(value);
  }
  if (fromGradio) gradioNext = Math.max(gradioNext, value.seq + 1);
  const known = early.get(value.seq);
  if (value.seq >= expected && !(known && known.bytes)) early.set(value.seq, { value, bytes });
  takeInOrder();
}

// Hand the chunks to the player in order, each once. A chunk that went down a socket since closed never comes,
// nor does one Gradio skipped: the player goes on without it (the video may jump), and says so.
function takeInOrder() {
  for (;;) {
    const chunk = early.get(expected);
    if (chunk && chunk.bytes) {
      if (chunk.bytes.length) pending.push(chunk.bytes); // (the stream's end may have nothing left to send)
    } else if (chunk ? comingDown(chunk.value.via) : expected >= gradioNext) {
      break; // still on its way
    } else {
      console.warn(`teller: live chunk ${expected} never arrived; the video may jump`);
    }
    early.delete(expected);
    expected += 1;
    if (!chunk) continue;
    const value = chunk.value;
    ending = Boolean(value.end);
    final = Boolean(value.final);
    reason = value.reason || reason;
    // The server is short of CPU and renders every other frame to keep up with the voice: say so while it lasts.
    if (!ending) label.textContent = value.reduced ? "Live · busy server: fewer frames" : "Live";
    if (final) stopMicrophone();
  }
  feed();
}

watch("value", () => {
  const value = props.value;
  if (value && value.microphone) microphoneAddress = value.microphone;
  if (value && value.video && !videoAddress) {
    videoAddress = value.video;
    openVideo();
  }
  if (!value || !value.session) return;
  receive(value, typeof value.data === "string" ? decode(value.data) : null, true);
});

// ---------------------------------------------------------------------------------------------- The video socket
// Open for the page's life, and opened again (after RECONNECT_SECONDS, doubling up to MAX_RECONNECT_SECONDS) if it
// closes; not if the server refused it (1008: an unknown page) or a newer socket of this page took over (4001).
// Each message is one chunk: the length of its JSON header (4 bytes, big-endian), the header, the MP4 bytes. The
// page answers each with {"received": messages so far}: the server closes a socket whose page stops reading.
const RECONNECT_SECONDS = 0.5;
const MAX_RECONNECT_SECONDS = 8;
let videoAddress = null;
let videoSocket = null;
let videoSockets = 0; // sockets opened so far: each has its number, which the server names with what it sent down it
let reconnectSeconds = RECONNECT_SECONDS;

function openVideo() {
  const url = new URL(videoAddress, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  videoSockets += 1;
  url.searchParams.set("n", String(videoSockets));
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.number = videoSockets;
  videoSocket = socket;
  let received = 0;
  socket.addEventListener("open", () => (reconnectSeconds = RECONNECT_SECONDS));
  socket.addEventListener("message", (event) => {
    if (!(event.data instanceof ArrayBuffer)) return;
    received += 1;
    socket.send(JSON.stringify({ received }));
    const length = new DataView(event.data).getUint32(0);
    const value = JSON.parse(new TextDecoder().decode(new Uint8Array(event.data, 4, length)));
    receive(value, new Uint8Array(event.data, 4 + length), false);
  });
  socket.addEventListener("close", (event) => {
    if (videoSocket !== socket) return;
    videoSocket = null;
    takeInOrder(); // what went down this socket and did not come never will
    if (event.code === 1008 || event.code === 4001) return;
    setTimeout(openVideo, reconnectSeconds * 1000);
    reconnectSeconds = Math.min(2 * reconnectSeconds, MAX_RECONNECT_SECONDS);
  });
}

// Whether a chunk sent down socket `via` may still come: that socket is this page's current one, not closed.
function comingDown(via) {
  return Boolean(videoSocket) && videoSocket.number === via && videoSocket.readyState <= WebSocket.OPEN;
}

// ------------------------------------------------------------------------------------------------ The microphone
// While Gradio's microphone records, the page records the same microphone itself and sends the voice to the server
// over a WebSocket of its own, one per recording: {"rate": r}, then 16-bit mono samples every SEND_EVERY_SECONDS,
// then {"end": true} after Stop. Gradio's streaming microphone posts each chunk to a route that keeps only the
// newest chunk not yet taken, so a busy server lost some of the speech (app_live.MICROPHONE_ROUTE).
const SEND_EVERY_SECONDS = 0.05;
// Runs on the audio thread: mixes the input to mono, converts it to 16-bit samples and posts them in blocks of
// `size`; "flush" posts what is left, then "flushed".
const CAPTURE_PROCESSOR = `
registerProcessor("teller-capture", class extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.size;
    this.block = new Int16Array(this.size);
    this.filled = 0;
    this.port.onmessage = () => {
      if (this.filled) this.port.postMessage(this.block.slice(0, this.filled).buffer);
      this.filled = 0;
      this.port.postMessage("flushed");
    };
  }
  process(inputs) {
    const channels = inputs[0];
    if (!channels.length) return true;
    for (let i = 0; i < channels[0].length; i++) {
      let sum = 0;
      for (const channel of channels) sum += channel[i];
      this.block[this.filled++] = Math.max(-32768, Math.min(32767, Math.round(32768 * sum / channels.length)));
      if (this.filled === this.size) {
        this.port.postMessage(this.block.buffer, [this.block.buffer]);
        this.block = new Int16Array(this.size);
        this.filled = 0;
      }
    }
    return true;
  }
});`;
const processorUrl = URL.createObjectURL(new Blob([CAPTURE_PROCESSOR], { type: "text/javascript" }));

let microphoneAddress = null; // where the voice goes, from the server (relative to the page)
let capture = null; // the recording being sent: {socket, context, stream, node, send}

function startCapture() {
  stopCapture();
  if (!microphoneAddress) {
    console.error("teller: the server gave no microphone address; the live session will hear nothing");
    return;
  }
  const url = new URL(microphoneAddress, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  const early = []; // what was recorded before the socket opened
  const send = (data) => (socket.readyState === WebSocket.OPEN ? socket.send(data) : early.push(data));
  socket.addEventListener("open", () => early.splice(0).forEach((data) => socket.send(data)));
  socket.addEventListener("close", (event) => {
    if (capture && capture.socket === socket) {
      console.warn(`teller: the microphone stream closed (${event.code}); the session hears no more`);
    }
  });
  // Made in the click's own turn: a context made later may start suspended (no user gesture).
  const context = new AudioContext({ latencyHint: "interactive" });
  const current = (capture = { socket, context, stream: null, node: null, send });
  send(JSON.stringify({ rate: context.sampleRate }));
  // The microphone and the recording code load side by side: on a busy machine each takes a good part of a second.
  const microphone = navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
  });
  microphone.then((stream) => (current.stream = stream), () => {}); // its tracks are stopped however it ends
  Promise.all([microphone, context.audioWorklet.addModule(processorUrl)])
    .then(([stream]) => {
      if (capture !== current) return; // stopped meanwhile
      const size = Math.round(SEND_EVERY_SECONDS * context.sampleRate);
      current.node = new AudioWorkletNode(context, "teller-capture", { processorOptions: { size } });
      current.node.port.onmessage = (event) => {
        if (event.data !== "flushed") send(event.data);
      };
      context.createMediaStreamSource(stream).connect(current.node);
    })
    .catch((error) => {
      if (capture === current) capture = null;
      console.error("teller: cannot record the microphone", error);
      showHint("The microphone cannot be recorded here: please allow it and press Record again.");
    })
    .finally(() => {
      if (capture !== current) finishCapture(current); // stopped while the microphone was opening
    });
}

// Stop recording: the last samples are sent, then the end, and the socket closes once all of it went out.
function stopCapture() {
  const current = capture;
  if (!current) return;
  capture = null;
  if (!current.node) return; // still opening: finished when it has opened
  current.node.port.onmessage = (event) => {
    if (event.data === "flushed") finishCapture(current);
    else current.send(event.data);
  };
  current.node.port.postMessage("flush");
}

function finishCapture(current) {
  if (current.stream) current.stream.getTracks().forEach((track) => track.stop());
  current.context.close();
  current.send(JSON.stringify({ end: true }));
  if (current.socket.readyState === WebSocket.OPEN) current.socket.close();
  else current.socket.addEventListener("open", () => current.socket.close(), { once: true });
}

// Gradio's microphone buttons: Record starts the page's own recording, Stop (or its "waiting" spinner) ends it.
document.addEventListener("click", (event) => {
  const button = event.target.closest && event.target.closest("#live-mic button");
  if (!button) return;
  if (button.classList.contains("record-button")) startCapture();
  else if (/stop-button|spinner-button/.test(button.className)) stopCapture();
}, true);
