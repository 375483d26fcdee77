// The Live tab's player (the `js_on_load` of a gr.HTML in app.py; Gradio runs it with `element`, `props` and
// `watch` defined). The live session yields one chunk of a fragmented MP4 at a time as this component's value,
// {session, seq, mime, data: base64, final, end, reason, reduced}; they are appended to a MediaSource as they
// arrive, so the first frames play about 0.1 s after they reach the page. Gradio's own streaming video goes
// through an HLS player instead, which re-encodes each segment on the server and buffers in the page: about a
// second more.
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

let session = null; // the live session whose chunks are playing
let source = null;
let buffer = null;
let pending = []; // chunks waiting for the SourceBuffer
let ending = false; // the stream's last chunk has come
let final = false; // the speech has ended: play every frame that comes
let reason = null; // why the session ended, when the visitor did not press Stop
let expected = 0; // the next chunk's number

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
  session = value.session;
  pending = [];
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

watch("value", () => {
  const value = props.value;
  if (!value || !value.session) return;
  if (value.session !== session) {
    start(value);
  } else if (value.seq !== expected) {
    console.warn(`teller: live chunk ${expected} never arrived; the video may jump`);
  }
  expected = value.seq + 1;
  if (value.data) pending.push(decode(value.data));
  ending = Boolean(value.end);
  final = Boolean(value.final);
  reason = value.reason || reason;
  // The server is short of CPU and renders every other frame to keep up with the voice: say so while it lasts.
  if (!ending) label.textContent = value.reduced ? "Live · busy server: fewer frames" : "Live";
  if (final) stopMicrophone();
  feed();
});
