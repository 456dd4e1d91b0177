// voice-agent browser client: mic → 20 ms PCM16 frames over the WebSocket; agent audio →
// AudioWorklet ring buffer, whose playout cursor is reported back ("playout" messages).
// Protocol: docs/protocol.md. Query flags: ?aec=0 turns echo cancellation, noise
// suppression and auto gain off (for a fake mic fed from a file).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const processing = params.get("aec") !== "0";

const va = (window.va = { events: [], played: {}, acked: {}, connected: false, closes: [] });
let ctx = null, ws = null, stream = null, capture = null, playback = null;
let live = false, userLine = null;
const agentLines = {};

function setStatus(text) { $("status").textContent = text; }
function showError(text) { const e = $("error"); e.textContent = text; e.hidden = !text; }
function setConn(on) {
  va.connected = on;
  $("conn").textContent = on ? "connected" : "disconnected";
  $("conn").className = "pill " + (on ? "on" : "off");
  for (const el of [$("interrupt"), $("text"), document.querySelector("#typed button")]) el.disabled = !on;
}

function line(who, cls) {
  const div = document.createElement("div");
  div.className = `line ${who} ${cls || ""}`;
  div.innerHTML = `<span class="who">${who === "user" ? "You" : "Agent"}</span><span class="text"></span>`;
  $("transcript").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function onEvent(ev) {
  va.events.push(ev);
  switch (ev.type) {
    case "session.started": setStatus("Listening…"); break;
    case "speech.started": setStatus("Listening…"); break;
    case "transcript.partial":
      if (!userLine) userLine = line("user", "partial");
      userLine.querySelector(".text").textContent = ev.text;
      break;
    case "transcript.final": {
      const el = userLine || line("user");
      el.classList.remove("partial");
      el.querySelector(".text").textContent = ev.text;
      el.dataset.final = "1";
      userLine = null;
      setStatus("Thinking…");
      break;
    }
    case "status": setStatus(ev.text); break;
    case "reply.start": agentLines[ev.gen] = line("agent"); break;
    case "reply.delta": {
      const el = agentLines[ev.gen] || (agentLines[ev.gen] = line("agent"));
      el.querySelector(".text").textContent += ev.text;
      break;
    }
    case "reply.audio.start": setStatus("Speaking…"); break;
    case "reply.done": {
      const el = agentLines[ev.gen];
      if (el && ev.text) el.querySelector(".text").textContent = ev.text;
      if (el && ev.status === "interrupted") el.classList.add("interrupted");
      setStatus("Listening…");
      break;
    }
    case "clear": playback && playback.port.postMessage({ type: "clear", gen: ev.gen }); break;
    case "metrics": bar(ev.turn); break;
    case "error": showError(ev.message); break;
  }
}

function bar(turn) {
  const ms = turn.voice_to_voice_ms;
  if (ms == null) return;
  const row = document.createElement("div");
  row.className = "bar";
  const fill = document.createElement("div");
  fill.className = "fill" + (ms > 1200 ? " slow" : "");
  fill.style.width = `${Math.min(100, (ms / 3000) * 100)}%`;
  row.appendChild(fill);
  row.appendChild(document.createTextNode(`${Math.round(ms)} ms`));
  $("bars").appendChild(row);
}

function onCursor(m) {
  va.played = m.played;
  for (const [gen, samples] of Object.entries(m.played)) {
    if (va.acked[gen] !== samples && ws && ws.readyState === WebSocket.OPEN) {
      va.acked[gen] = samples;
      ws.send(JSON.stringify({ type: "playout", gen: Number(gen), samples }));
    }
  }
}

async function start() {
  showError("");
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing },
    });
  } catch (err) {
    showError(err.name === "NotAllowedError"
      ? "Microphone access was denied. Allow the microphone for this page and press Start again."
      : `Could not open the microphone: ${err.message}`);
    setStatus("");
    return;
  }
  ctx = new AudioContext({ sampleRate: 48000 });
  await ctx.audioWorklet.addModule("/static/capture-worklet.js");
  await ctx.audioWorklet.addModule("/static/playback-worklet.js");
  capture = new AudioWorkletNode(ctx, "capture");
  playback = new AudioWorkletNode(ctx, "playback", { outputChannelCount: [1] });
  playback.port.onmessage = (e) => onCursor(e.data);
  playback.connect(ctx.destination);
  ctx.createMediaStreamSource(stream).connect(capture);
  capture.port.onmessage = (e) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(e.data); };
  connect();
  live = true;
  $("start").textContent = "Stop";
  $("start").classList.add("live");
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/v1/voice/ws`);
  ws.binaryType = "arraybuffer";
  setStatus("Connecting…");
  ws.onopen = () => {
    setConn(true);
    ws.send(JSON.stringify({ type: "session.start", sample_rate: ctx.sampleRate, output_sample_rate: ctx.sampleRate, encoding: "pcm16" }));
  };
  ws.onmessage = (e) => {
    if (typeof e.data === "string") { onEvent(JSON.parse(e.data)); return; }
    const view = new DataView(e.data);
    const gen = view.getUint32(0, true);
    const samples = new Int16Array(e.data.slice(8));
    playback.port.postMessage({ type: "push", gen, samples }, [samples.buffer]);
  };
  ws.onclose = (e) => {
    va.closes.push({ code: e.code, reason: e.reason });
    setConn(false);
    if (live) {
      showError(`Connection lost (${e.code}${e.reason ? ": " + e.reason : ""}). Press Reconnect to try again.`);
      setStatus("");
      $("start").textContent = "Reconnect";
      $("start").classList.remove("live");
      live = false;
      ws = null;
    }
  };
}

function stop() {
  live = false;
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "session.end" }));
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (ctx) ctx.close();
  ctx = stream = capture = playback = null;
  $("start").textContent = "Start talking";
  $("start").classList.remove("live");
  setStatus("Stopped.");
}

$("start").onclick = () => {
  if (live) { stop(); return; }
  if (ctx && !ws) {  // reconnect with the mic still open
    showError("");
    connect();
    live = true;
    $("start").textContent = "Stop";
    $("start").classList.add("live");
    return;
  }
  start();
};
$("interrupt").onclick = () => ws && ws.send(JSON.stringify({ type: "interrupt" }));
$("typed").onsubmit = (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (text && ws) { ws.send(JSON.stringify({ type: "text", text })); $("text").value = ""; }
};
setConn(false);
