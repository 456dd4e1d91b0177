// voice-agent browser client. Two transports (docs/protocol.md):
// - WebRTC (the default): the mic is an Opus track with the browser's echo cancellation,
//   jitter buffer and loss concealment; agent audio is the server's paced track, played by
//   an <audio> element; events and client messages travel on a data channel.
// - WebSocket: the mic as 20 ms PCM16 frames; agent audio → AudioWorklet ring buffer, whose
//   playout cursor is reported back ("playout" messages).
// Query flags: ?transport=ws|webrtc picks the transport; ?aec=0 turns echo cancellation,
// noise suppression and auto gain off (for a fake mic fed from a file).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const processing = params.get("aec") !== "0";
if (params.get("transport") === "ws" || params.get("transport") === "webrtc") {
  $("transport").value = params.get("transport");
}

// ?token=… (a token from POST /v1/tokens, minted by the operator's backend with an API
// key) goes with every call: a header where it can, the URL where a browser cannot set one
const token = params.get("token");
const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};
const withToken = (url) => (token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url);

const va = (window.va = {
  authHeaders, withToken,
  events: [], played: {}, acked: {}, connected: false, closes: [], transport: null,
  rtc: { energy: 0, loudFrames: 0, state: "new" },
});
let ctx = null, ws = null, stream = null, capture = null, playback = null;
let pc = null, dc = null, meter = null;
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
    case "session.started":
      setStatus("Listening…");
      if (ev.conversation_id) va.conversationId = ev.conversation_id;  // the chat pane joins it
      break;
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
    // WebRTC pauses on the server; the WebSocket player holds its own buffer
    case "reply.paused": playback && playback.port.postMessage({ type: "pause", gen: ev.gen }); break;
    case "reply.resumed": playback && playback.port.postMessage({ type: "resume", gen: ev.gen }); break;
    case "barge_in": setStatus("Listening…"); break;
    case "filler": break;  // a "Hmm." while the answer is prepared: heard, not shown
    case "session.ending": setStatus("The agent is ending the call (no one spoke for a while)."); break;
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

function send(message) {
  const text = JSON.stringify(message);
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(text);
  else if (dc && dc.readyState === "open") dc.send(text);
}

function lost(reason) {
  setConn(false);
  if (!live) return;
  showError(`Connection lost (${reason}). Press Reconnect to try again.`);
  setStatus("");
  $("start").textContent = "Reconnect";
  $("start").classList.remove("live");
  live = false;
  closeTransport();
  $("transport").disabled = false;
}

function closeTransport() {
  if (ws) { ws.onclose = null; if (ws.readyState <= WebSocket.OPEN) ws.close(); }
  if (dc) { dc.onclose = null; }
  if (pc) { pc.onconnectionstatechange = null; pc.close(); }
  if (meter) clearInterval(meter);
  ws = dc = pc = meter = null;
  const audio = $("remote");
  if (audio) audio.srcObject = null;
}

async function openMic() {
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing },
    });
  } catch (err) {
    showError(err.name === "NotAllowedError"
      ? "Microphone access was denied. Allow the microphone for this page and press Start again."
      : `Could not open the microphone: ${err.message}`);
    setStatus("");
    return false;
  }
  ctx = new AudioContext({ sampleRate: 48000 });
  return true;
}

async function start() {
  showError("");
  if (!(await openMic())) return;
  live = true;
  $("start").textContent = "Stop";
  $("start").classList.add("live");
  await connect();
}

async function connect() {
  va.transport = $("transport").value;
  $("transport").disabled = true;
  setStatus("Connecting…");
  try {
    if (va.transport === "ws") await connectWs();
    else await connectRtc();
  } catch (err) {
    lost(err.message || String(err));
  }
}

async function connectWs() {
  if (!capture) {
    await ctx.audioWorklet.addModule("/static/capture-worklet.js");
    await ctx.audioWorklet.addModule("/static/playback-worklet.js");
    capture = new AudioWorkletNode(ctx, "capture");
    playback = new AudioWorkletNode(ctx, "playback", { outputChannelCount: [1] });
    playback.port.onmessage = (e) => onCursor(e.data);
    playback.connect(ctx.destination);
    ctx.createMediaStreamSource(stream).connect(capture);
    capture.port.onmessage = (e) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(e.data); };
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(withToken(`${scheme}://${location.host}/v1/voice/ws`));
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    setConn(true);
    const start = { type: "session.start", sample_rate: ctx.sampleRate, output_sample_rate: ctx.sampleRate, encoding: "pcm16" };
    const cid = (va.chat && va.chat.conversationId) || va.conversationId;
    if (cid) start.conversation_id = cid;  // the call goes on with the chat's conversation
    ws.send(JSON.stringify(start));
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
    ws = null;
    lost(`${e.code}${e.reason ? ": " + e.reason : ""}`);
  };
}

function iceGathered(peer, ms) {
  // the server takes one offer with every candidate in it (no trickle)
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (peer.iceGatheringState === "complete") resolve(); };
    peer.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms);
  });
}

function meterRemote(remote) {
  // the page's own measure of the agent audio it receives: RMS per 50 ms
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  ctx.createMediaStreamSource(remote).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  meter = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    const rms = Math.sqrt(sum / buf.length);
    va.rtc.energy = Math.max(va.rtc.energy, rms);
    if (rms > 0.01) va.rtc.loudFrames += 1;
  }, 50);
}

async function connectRtc() {
  const cfg = await (await fetch("/v1/voice/webrtc/config", { headers: authHeaders })).json();
  pc = new RTCPeerConnection({ iceServers: cfg.ice_servers });
  const peer = pc;
  for (const track of stream.getAudioTracks()) peer.addTrack(track, stream);
  dc = peer.createDataChannel("events");
  dc.onopen = () => setConn(true);
  dc.onmessage = (e) => onEvent(JSON.parse(e.data));
  dc.onclose = () => { va.closes.push({ transport: "webrtc", state: peer.connectionState }); lost("the call ended"); };
  peer.ontrack = (e) => {
    const remote = e.streams[0] || new MediaStream([e.track]);
    $("remote").srcObject = remote;  // Chrome plays remote WebRTC audio only via a media element
    $("remote").play().catch(() => {});
    meterRemote(remote);
  };
  peer.onconnectionstatechange = () => {
    va.rtc.state = peer.connectionState;
    if (peer.connectionState === "failed") lost("WebRTC connection failed");
  };
  await peer.setLocalDescription(await peer.createOffer());
  await iceGathered(peer, 3000);
  const r = await fetch("/v1/voice/webrtc/offer", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders },
    body: JSON.stringify({ sdp: peer.localDescription.sdp, type: "offer" }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`the server refused the call: ${r.status} ${body.error || ""}`.trim());
  va.sessionId = body.session_id;
  await peer.setRemoteDescription({ type: "answer", sdp: body.sdp });
}

// getStats() of the call, and of the agent audio as the browser received it
va.stats = async () => (pc ? pc.getStats() : new Map());
va.inboundAudio = async () => {
  for (const s of (await va.stats()).values()) {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      return { totalAudioEnergy: s.totalAudioEnergy, totalSamplesReceived: s.totalSamplesReceived,
               audioLevel: s.audioLevel, packetsReceived: s.packetsReceived, jitter: s.jitter };
    }
  }
  return null;
};

function stop() {
  live = false;
  send({ type: "session.end" });
  closeTransport();
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (ctx) ctx.close();
  ctx = stream = capture = playback = null;
  setConn(false);
  $("transport").disabled = false;
  $("start").textContent = "Start talking";
  $("start").classList.remove("live");
  setStatus("Stopped.");
}

$("start").onclick = () => {
  if (live) { stop(); return; }
  if (ctx) {  // reconnect with the mic still open
    showError("");
    live = true;
    $("start").textContent = "Stop";
    $("start").classList.add("live");
    connect();
    return;
  }
  start();
};
$("interrupt").onclick = () => send({ type: "interrupt" });
$("typed").onsubmit = (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (text && va.connected) { send({ type: "text", text }); $("text").value = ""; }
};
setConn(false);
