// voicegate browser client: one session over /v1/session, audio over WebRTC (docs/protocol.md).
// Plain ES module, no build step. State for tests and debugging lives on window.vg.

import { streamChat } from "./llm.js";
import { VoiceInput } from "./voice_in.js";

const $ = (id) => document.getElementById(id);
const now = () => performance.now();
const SILENT_DBFS = -50;      // agent audio below this is "silent" at the page
const LOUD_DBFS = -40;        // ... above this is "speaking"
const CHARS_PER_S = 14;       // the server's speaking-rate estimate (protocol.md, spoken_text)

const vg = window.vg = {
  events: [], errors: [], notices: [], levels: [], utterances: {}, order: [],
  voices: {}, model: { kind: null, instruct: false },
  connectMs: null, session: null, connected: false, firstLoudAt: null,
  iceErrors: [],  // icecandidateerror events (a TURN server that refused us or did not answer)
  async stats() { return inboundStats(); },
  async selectedPair() { return selectedPair(); },
};

let ws = null, pc = null, mic = null, ctx = null, agentAn = null, micAn = null, timer = null;
let fed = "";            // what the text box has streamed into the open utterance
let pending = [];        // local utterance records opened by our text.append, waiting for an id
let openLocal = null;    // the local record our appends currently feed
let lastSpeechStarted = null, lastMicOnset = null, micLoud = false;

// ---------- errors ------------------------------------------------------------------------------
function showError(msg) {
  vg.errors.push(msg);
  const p = document.createElement("p");
  p.textContent = msg;
  $("errors").append(p);
  while ($("errors").children.length > 5) $("errors").firstChild.remove();
}
function showNotice(msg) {
  vg.notices.push(msg);
  $("notice").textContent = msg;
}
window.addEventListener("error", (e) => showError(`page error: ${e.message}`));
window.addEventListener("unhandledrejection", (e) => showError(`error: ${e.reason?.message ?? e.reason}`));

function setStatus(text, cls = "") { const s = $("status"); s.textContent = text; s.className = `status ${cls}`; }

function send(msg) {
  if (!ws || ws.readyState !== WebSocket.OPEN) { showError("not connected"); return false; }
  ws.send(JSON.stringify(msg));
  if (msg.type === "text.append") vg.appends = (vg.appends || 0) + 1;
  return true;
}

// ---------- connect / disconnect ----------------------------------------------------------------
async function connect() {
  const t0 = now();
  $("connect").disabled = true;
  $("errors").replaceChildren();
  setStatus("connecting…");
  try {
    ctx = new AudioContext();  // the device rate: Firefox refuses mic sources at another rate
    // With no audio output (e.g. no sound server), resume() never settles: fail instead of hanging.
    await Promise.race([ctx.resume(), new Promise((_, reject) => setTimeout(
      () => reject(new Error("audio output did not start within 5 s: is an audio device available?")), 5000))]);
    mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false } });
    micAn = analyser(ctx.createMediaStreamSource(mic));
    await openSession();
    vg.connectMs = Math.round(now() - t0);
    $("connect-time").textContent = `connected in ${vg.connectMs} ms`;
    sessionUp();
    $("text").focus();
    timer = setInterval(tick, 20);
  } catch (err) {
    showError(`connect failed: ${err.message ?? err}`);
    setStatus("error", "error");
    teardown();
  }
}

// One session over the page's mic and audio context: the WebSocket, session.created, the WebRTC peer.
// `keep`: the voice fields chosen in the session before (a reconnect), asked of this one where it offers them.
async function openSession(keep = null) {
  const params = new URLSearchParams(location.search);
  const q = params.get("api_key") ? `?api_key=${encodeURIComponent(params.get("api_key"))}` : "";
  const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/session${q}`;
  const socket = ws = new WebSocket(wsUrl);
  ws.onmessage = (e) => { if (typeof e.data === "string") onEvent(JSON.parse(e.data)); };
  ws.onclose = (e) => {
    if (socket !== ws) return;
    // The server drained (session.closing, then 1012): a new session, on another replica behind the proxy.
    if (vg.connected && (e.code === 1012 || vg.closing)) { reconnect(); return; }
    if (vg.connected || e.code !== 1000) {
      if (e.code !== 1000 && e.code !== 1005) showError(`connection closed (${e.code}${e.reason ? ": " + e.reason : ""})`);
    }
    teardown();
  };
  const created = await new Promise((resolve, reject) => {
    ws.addEventListener("message", function first(e) {
      const m = JSON.parse(e.data);
      ws.removeEventListener("message", first);
      m.type === "session.created" ? resolve(m) : reject(new Error(m.message || m.type));
    });
    ws.onerror = () => reject(new Error(`cannot reach ${wsUrl}`));
  });
  vg.closing = false;
  fillPickers(created);
  const fields = voiceFields();
  if (keep?.voice && vg.voices[keep.voice]) fields.voice = $("voice").value = keep.voice;
  if (keep?.language && created.languages.includes(keep.language)) fields.language = $("language").value = keep.language;
  if (keep?.instruct) fields.instruct = keep.instruct;
  send({ type: "session.update", audio: "webrtc", ...fields });
  voiceIn.connect(created);  // its own session.update: a server without a recognizer refuses it alone

  // ICE servers and TURN credentials minted for this session (none: host candidates only)
  pc = new RTCPeerConnection({ iceServers: created.ice_servers || [],
    iceTransportPolicy: created.ice_transport_policy || "all" });
  vg.iceErrors = [];
  pc.onicecandidateerror = (e) => vg.iceErrors.push(`${e.url}: ${e.errorCode} ${e.errorText}`.trim());
  pc.addTrack(mic.getAudioTracks()[0], mic);
  pc.ontrack = (e) => {
    const stream = e.streams[0] || new MediaStream([e.track]);
    const el = $("remote");
    el.srcObject = stream;  // Chrome pulls a remote track only when a media element plays it
    el.play().catch((err) => showError(`audio playback blocked: ${err.message}`));
    agentAn = analyser(ctx.createMediaStreamSource(stream));
  };
  const peer = pc;
  pc.onconnectionstatechange = () => {
    if (peer === pc && pc.connectionState === "failed") showError("WebRTC connection failed");
  };
  await pc.setLocalDescription(await pc.createOffer());
  await iceComplete(pc);
  if (created.ice_transport_policy === "relay" && !/ typ relay/.test(pc.localDescription.sdp)) {
    throw new Error(turnFailed("no TURN relay candidate"));
  }
  const answer = waitFor("webrtc.answer");
  vg.offerSdp = pc.localDescription.sdp;
  send({ type: "webrtc.offer", sdp: vg.offerSdp });
  await pc.setRemoteDescription({ type: "answer", sdp: (await answer).sdp });
  await connectedPeer(pc).catch((err) => { throw new Error(turnFailed(err.message)); });
}

function sessionUp() {
  vg.connected = true;
  setStatus("connected", "connected");
  for (const id of ["disconnect", "text", "speak", "stop", "voice", "language"]) $(id).disabled = false;
  syncInstruct();
}

// The session's socket and peer, not the mic, the audio context or the conversation (LLM turns, choices).
function closeSession() {
  vg.connected = false;
  abortLlm();
  if (ws) { ws.onclose = null; ws.close(1000); ws = null; }
  if (pc) { pc.close(); pc = null; }
  agentAn = null;
  fed = ""; pending = []; openLocal = null;
  voiceIn.disconnect();
  $("remote").srcObject = null;
}

// After a drain: a new session with the same voice choices; the chat with the LLM goes on in it.
async function reconnect() {
  const keep = { voice: $("voice").value, language: $("language").value,
    instruct: $("instruct").disabled ? "" : $("instruct").value.trim() };
  closeSession();
  vg.reconnects = (vg.reconnects || 0) + 1;
  setStatus("reconnecting…");
  for (const id of ["text", "speak", "stop", "voice", "language", "instruct"]) $(id).disabled = true;
  let lastError = null;
  for (const delayMs of [0, 250, 500, 1000, 2000, 4000]) {
    await new Promise((r) => setTimeout(r, delayMs));
    if (!mic) return;  // the user disconnected meanwhile
    try {
      await openSession(keep);
      vg.reconnectedAt = now();
      sessionUp();
      showNotice("reconnected: the server restarted, this is a new session");
      return;
    } catch (err) {
      lastError = err;
      closeSession();
    }
  }
  showError(`reconnect failed: ${lastError?.message ?? lastError}`);
  setStatus("error", "error");
  teardown();
}

function teardown() {
  closeSession();
  clearInterval(timer); timer = null;
  if (mic) { mic.getTracks().forEach((t) => t.stop()); mic = null; }
  if (ctx) { ctx.close(); ctx = null; }
  micAn = null;
  for (const id of ["disconnect", "text", "speak", "stop", "voice", "language", "instruct", "copy"]) $(id).disabled = true;
  $("connect").disabled = false;
  if (!$("status").classList.contains("error")) setStatus("disconnected");
  setMeter("agent", -100); setMeter("mic", -100);
}

function waitFor(type, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const to = setTimeout(() => reject(new Error(`no ${type} within ${timeoutMs} ms`)), timeoutMs);
    const h = (e) => {
      const m = JSON.parse(e.data);
      if (m.type === type || m.type === "error") {
        ws.removeEventListener("message", h); clearTimeout(to);
        m.type === "error" ? reject(new Error(`${m.code}: ${m.message}`)) : resolve(m);
      }
    };
    ws.addEventListener("message", h);
  });
}

function iceComplete(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (peer.iceGatheringState === "complete") resolve(); };
    peer.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000);  // send what we have
  });
}

// A failure message with what the TURN servers said, if anything (e.g. "401 Unauthorized": a wrong secret).
function turnFailed(msg) {
  return vg.iceErrors.length ? `${msg} (TURN: ${[...new Set(vg.iceErrors)].join("; ")})` : msg;
}

// The nominated candidate pair's local and remote candidate types ("host", "srflx", "prflx", "relay").
async function selectedPair() {
  if (!pc) return null;
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((r) => { if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") pair = r; });
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
  return { local: local?.candidateType, remote: remote?.candidateType, localAddress: local?.address,
    localPort: local?.port, relayProtocol: local?.relayProtocol ?? null };
}

function connectedPeer(peer) {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (peer.connectionState === "connected") resolve();
      else if (peer.connectionState === "failed") reject(new Error("WebRTC connection failed"));
    };
    peer.addEventListener("connectionstatechange", check);
    check();
    setTimeout(() => reject(new Error("WebRTC did not connect within 10 s")), 10000);
  });
}

// ---------- pickers and the agent snippet -------------------------------------------------------
function voiceLabel(v) {
  if (v.kind === "preset") return v.dialect ? `${v.name} (${v.dialect.replace("_", " ")})` : v.name;
  if (v.kind === "cloned") return `${v.name} — cloned, ${v.mode === "icl" ? "ICL" : "x-vector"}`;
  return `${v.name} — designed`;
}

// The voice picker: presets, then saved voices (session.created `voice_details`; plain names from older servers).
function fillVoices(c) {
  const details = c.voice_details ?? c.voices.map((name) => ({ name, kind: "preset", instruct: c.instruct }));
  vg.voices = Object.fromEntries(details.map((v) => [v.name, v]));
  const groups = [["Preset speakers", details.filter((v) => v.kind === "preset")],
                  ["Saved voices", details.filter((v) => v.kind !== "preset")]];
  const sel = $("voice");
  sel.replaceChildren(...groups.filter(([, vs]) => vs.length).map(([label, vs]) => {
    const g = document.createElement("optgroup");
    g.label = label;
    g.append(...vs.map((v) => new Option(voiceLabel(v), v.name)));
    return g;
  }));
  if (c.config?.voice && vg.voices[c.config.voice]) sel.value = c.config.voice;
}

// Instruct is offered only where the model follows it (1.7B CustomVoice, VoiceDesign); a designed voice shows
// its saved description, which an instruction typed here replaces.
function syncInstruct() {
  const v = vg.voices[$("voice").value];
  const honoured = vg.model.instruct && (v ? v.instruct !== false : true);
  $("instruct-label").hidden = !vg.model.instruct;
  $("instruct").disabled = !vg.connected || !honoured;
  $("instruct").placeholder = v?.description ?? "e.g. calm, slow, warm";
}

function fillPickers(c) {
  vg.session = c.session;
  vg.model = { kind: c.model_kind, instruct: c.instruct };
  fillVoices(c);
  const lang = $("language");
  lang.replaceChildren(...c.languages.map((v) => new Option(v, v)));
  if (c.config?.language && c.languages.includes(c.config.language)) lang.value = c.config.language;
  syncInstruct();
  $("sid").textContent = c.session;
  $("token").textContent = c.token;
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/session?session=${c.session}&token=${c.token}`;
  $("snippet").firstChild.textContent = `# pip install websockets — joins this browser's session as a producer
import asyncio, json, websockets

URL = "${url}"

async def main():
    async with websockets.connect(URL) as ws:
        print(json.loads(await ws.recv())["type"])  # session.created
        for word in "Hello from your agent, speaking in the browser.".split():
            await ws.send(json.dumps({"type": "text.append", "text": word + " "}))
        await ws.send(json.dumps({"type": "text.flush"}))
        async for msg in ws:
            event = json.loads(msg)
            print(event)
            if event["type"] in ("utterance.done", "utterance.interrupted"):
                break  # on barge-in: keep event["spoken_text"] as what the user heard

asyncio.run(main())
`;
  $("copy").disabled = false;
}

function voiceFields() {
  const f = {};
  if ($("voice").value) f.voice = $("voice").value;
  if ($("language").value) f.language = $("language").value;
  if (!$("instruct").disabled && $("instruct").value.trim()) f.instruct = $("instruct").value.trim();
  return f;
}

// Picking a voice sends only the voice: a saved voice brings its own language (session.updated says which).
$("voice").addEventListener("change", () => {
  syncInstruct();
  send({ type: "session.update", voice: $("voice").value });
});
$("language").addEventListener("change", () => send({ type: "session.update", language: $("language").value }));
$("instruct").addEventListener("change", () => send({ type: "session.update", instruct: $("instruct").value.trim() }));

$("copy").addEventListener("click", async () => {
  const text = $("snippet").textContent;
  try { await navigator.clipboard.writeText(text); $("copy").textContent = "Copied"; }
  catch {
    const r = document.createRange(); r.selectNodeContents($("snippet"));
    getSelection().removeAllRanges(); getSelection().addRange(r);
    $("copy").textContent = "Selected: press Ctrl+C";
  }
  setTimeout(() => { $("copy").textContent = "Copy snippet"; }, 2000);
});

// ---------- text streaming ----------------------------------------------------------------------
// One text.append into the open utterance; its local record waits for the server's utterance id.
function appendText(add, turn = null) {
  if (!send({ type: "text.append", text: add })) return false;
  if (!openLocal) {
    openLocal = { text: "", firstTextAt: now(), turn };
    pending.push(openLocal);
  }
  openLocal.text += add;
  return true;
}

$("text").addEventListener("input", () => {
  if (llmOn()) return;  // with the LLM bridge the text box holds the question, not speech
  const value = $("text").value;
  if (value.startsWith(fed)) {
    const add = value.slice(fed.length);
    if (add && appendText(add)) {
      fed = value;
      $("hint").textContent = "";
    }
  } else {
    $("hint").textContent = "text already streamed cannot be taken back; Stop cancels it";
    fed = value.slice(0, commonPrefix(value, fed));
  }
});

function commonPrefix(a, b) { let i = 0; while (i < a.length && i < b.length && a[i] === b[i]) i++; return i; }

function speak() {
  if (llmOn()) { askLlm($("text").value); return; }
  if (send({ type: "text.flush" })) { $("text").value = ""; fed = ""; openLocal = null; }
}
function stop() {
  abortLlm();
  send({ type: "utterance.cancel", all: true }); $("text").value = ""; fed = ""; openLocal = null;
}

// ---------- the LLM bridge (off by default) -----------------------------------------------------
// Each turn: the question goes to an OpenAI-compatible endpoint, every streamed delta becomes one
// text.append, the end a text.flush. The conversation keeps what the listener HEARD of each reply
// (spoken_text after a barge-in or cancel), so the model's context matches the conversation.
const llm = vg.llm = { turns: [], controller: null, requests: 0 };
const LLM_FIELDS = ["llm-url", "llm-model", "llm-system"];
const llmOn = () => $("llm-on").checked;
const voiceIn = new VoiceInput({
  send: (transcription) => send({ type: "session.update", transcription }),
  onTurn: (text) => askLlm(text, false),  // a final transcript: asked exactly as if typed
  onPending: () => renderLlm(),
  bridgeOn: () => llmOn(),
});
vg.voice = voiceIn.log;
// The recognizer (or none) before connecting: /healthz says {"stt": {backend, model} | null}.
fetch("/healthz").then((r) => r.json()).then((h) => voiceIn.setServer(h.stt)).catch(() => {});

for (const id of LLM_FIELDS) {
  const saved = localStorage.getItem(`voicegate.${id}`);
  if (saved !== null) $(id).value = saved;
  $(id).addEventListener("change", () => localStorage.setItem(`voicegate.${id}`, $(id).value));
}
$("llm-on").addEventListener("change", () => {
  $("llm-state").textContent = llmOn() ? "on: Enter asks the LLM" : "off";
  voiceIn.render(); renderLlm();
  $("text").placeholder = llmOn() ? "Ask the LLM; Enter sends, Esc stops the answer."
    : "Type: each character streams to the agent as you type. Enter = speak, Esc = stop.";
});
$("llm-reset").addEventListener("click", () => { abortLlm(); llm.turns = []; renderLlm(); });

function llmMessages(question) {
  const messages = [];
  const system = $("llm-system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const t of llm.turns) {
    messages.push({ role: "user", content: t.user });
    messages.push({ role: "assistant", content: t.heard ?? t.reply });
  }
  messages.push({ role: "user", content: question });
  return messages;
}

async function askLlm(text, typed = true) {
  const question = text.trim();
  if (!question || !vg.connected) return;
  abortLlm();
  const turn = { user: question, reply: "", heard: null, state: "asking" };
  const messages = llmMessages(question);
  llm.turns.push(turn);
  if (typed) $("text").value = "";  // a spoken question leaves what is being typed alone
  fed = ""; openLocal = null;
  const controller = llm.controller = new AbortController();
  llm.requests += 1;
  $("llm-state").textContent = "waiting for the LLM…";
  renderLlm();
  try {
    for await (const delta of streamChat({ endpoint: $("llm-url").value, model: $("llm-model").value.trim(),
      apiKey: $("llm-key").value.trim(), messages, signal: controller.signal })) {
      if (controller.signal.aborted) break;
      if (!appendText(delta, turn)) throw new Error("the voice session is closed");
      turn.reply += delta; turn.state = "answering";
      $("llm-state").textContent = "answering…";
      renderLlm();
    }
    if (!controller.signal.aborted) turn.state = "answered";
    else if (turn.state === "answering" || turn.state === "asking") turn.state = "stopped";
  } catch (err) {
    if (err.name === "AbortError") {
      if (turn.state === "answering" || turn.state === "asking") turn.state = "stopped";
    } else {
      turn.state = "failed";
      showError(`LLM: ${err.message ?? err}`);
    }
  } finally {
    // speak what arrived (a failed reply says its beginning; an aborted one was cancelled already)
    if (!controller.signal.aborted && turn.reply && send({ type: "text.flush" })) openLocal = null;
    if (llm.controller === controller) llm.controller = null;
    $("llm-state").textContent = llmOn() ? "on: Enter asks the LLM" : "off";
    renderLlm();
  }
}

function abortLlm() {
  if (llm.controller) { llm.controller.abort(); llm.controller = null; }
}

// The server's account of an utterance that carried a reply: keep what was heard.
function heardReply(u, heard, interruptedBy = null) {
  const turn = u.local?.turn;
  if (!turn) return;
  turn.heard = (turn.heard ?? "") + heard;
  if (interruptedBy) turn.state = interruptedBy === "barge_in" ? "interrupted by you" : "stopped";
  renderLlm();
}

function renderLlm() {
  $("llm-log").replaceChildren(...llm.turns.slice(-6).flatMap((t) => {
    const q = document.createElement("li"); q.className = "user"; q.textContent = t.user;
    const a = document.createElement("li"); a.className = "assistant";
    const heard = t.heard ?? t.reply;
    const s = document.createElement("span"); s.className = "spoken"; s.textContent = heard;
    const n = document.createElement("span"); n.className = "unspoken";
    n.textContent = t.reply.startsWith(heard) ? t.reply.slice(heard.length) : "";
    const meta = document.createElement("div"); meta.className = "meta"; meta.textContent = t.state;
    a.append(s, n, meta);
    return [q, a];
  }), ...pendingBubble());
}

// The turn being spoken, as a user bubble that its final transcript replaces in place.
function pendingBubble() {
  const p = voiceIn.pending;
  if (!p || !llmOn()) return [];
  const q = document.createElement("li"); q.className = "user pending"; q.textContent = p.text;
  q.setAttribute("aria-label", `you are saying: ${p.text}`);
  return [q];
}

$("speak").addEventListener("click", speak);
$("stop").addEventListener("click", stop);
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); speak(); }
});
document.addEventListener("keydown", (e) => { if (e.key === "Escape" && vg.connected) { e.preventDefault(); stop(); } });
$("connect").addEventListener("click", connect);
$("disconnect").addEventListener("click", () => { teardown(); setStatus("disconnected"); });

// ---------- server events -----------------------------------------------------------------------
function utt(id) {
  let u = vg.utterances[id];
  if (!u) {
    const local = pending.shift();
    u = vg.utterances[id] = { id, text: local?.text ?? "", local, firstTextAt: local?.firstTextAt ?? null,
      state: "queued", el: document.createElement("li") };
    if (local === openLocal) local.bound = u;
    vg.order.push(id);
    $("utterances").prepend(u.el);
    while ($("utterances").children.length > 8) $("utterances").lastChild.remove();
  }
  if (u.local) u.text = u.local.text;
  return u;
}

function onEvent(m) {
  m.at = now();
  vg.events.push(m);
  if (voiceIn.handle(m)) return;
  switch (m.type) {
    case "utterance.queued": render(utt(m.utterance)); break;
    case "utterance.started": { const u = utt(m.utterance); u.state = "playing"; u.startedAt = m.at; render(u); break; }
    case "audio.first": { const u = utt(m.utterance); u.serverFirstMs = m.latency_ms; u.firstAudioEventAt = m.at; render(u); break; }
    case "utterance.done": {
      const u = utt(m.utterance); u.state = "done"; u.text = m.text_fed; u.spoken = m.text_fed; u.unspoken = "";
      u.playedMs = m.played_ms; render(u); heardReply(u, m.text_fed); break;
    }
    case "utterance.interrupted": {
      const u = utt(m.utterance);
      u.state = m.reason === "barge_in" ? "interrupted" : "cancelled";
      Object.assign(u, { text: m.text_fed, spoken: m.spoken_text, unspoken: m.unspoken_text, playedMs: m.played_ms,
        reason: m.reason, interruptedAt: m.at });
      if (u.local?.turn) { if (u.local.turn === llm.turns.at(-1)) abortLlm(); heardReply(u, m.spoken_text, m.reason); }
      if (u.local === openLocal) { openLocal = null; fed = ""; if (!llmOn()) $("text").value = ""; }
      if (m.awaiting_flush) send({ type: "text.flush" });  // the rest is never spoken over the user
      if (m.reason === "barge_in") {
        u.bargeIn = { decisionAt: lastSpeechStarted ?? m.at, micOnsetAt: lastMicOnset, silentAt: null };
        showBargeIn(u);
      }
      render(u); break;
    }
    case "user.speech_started":
      lastSpeechStarted = m.at;
      if (m.ignored) $("speaking").textContent = "speech ignored (echo guard)";
      break;
    case "user.speech_stopped": break;
    case "error": showError(`${m.code}: ${m.message}`); break;
    case "warning": showNotice(`${m.code}: ${m.message}`); break;
    case "session.updated":
      if (m.config.voice && vg.voices?.[m.config.voice]) $("voice").value = m.config.voice;
      if (m.config.language) $("language").value = m.config.language;
      syncInstruct();
      break;
    case "webrtc.state": if (m.state === "failed") showError("WebRTC: the server's peer failed"); break;
    case "session.closing": if (m.reconnect) { vg.closing = true; setStatus("server restarting…"); } break;
  }
}

function showBargeIn(u) {
  const b = $("bargein");
  b.hidden = false;
  b.classList.remove("flash"); void b.offsetWidth; b.classList.add("flash");
  vg.bargeIns = (vg.bargeIns || 0) + 1;
  updateBargeIn(u);
}
function updateBargeIn(u) {
  const bi = u.bargeIn;
  const stopMs = bi.silentAt != null ? `agent silent at the page ${Math.round(bi.silentAt - bi.decisionAt)} ms after the server's decision` : "waiting for silence…";
  const fromVoice = bi.silentAt != null && bi.micOnsetAt != null ? ` (${Math.round(bi.silentAt - bi.micOnsetAt)} ms after your voice)` : "";
  $("bargein-detail").textContent = `you interrupted after ${u.playedMs} ms; ${stopMs}${fromVoice}.`;
}

function render(u) {
  const el = u.el;
  if (u.local && u.spoken === undefined) u.text = u.local.text;
  el.className = u.state;
  el.replaceChildren();
  const text = document.createElement("div");
  if (u.spoken !== undefined) {
    const s = document.createElement("span"); s.className = "spoken"; s.textContent = u.spoken;
    const n = document.createElement("span"); n.className = "unspoken"; n.textContent = u.unspoken;
    text.append(s, n);
  } else {
    const est = spokenEstimate(u);
    const s = document.createElement("span"); s.className = "spoken"; s.textContent = u.text.slice(0, est);
    text.append(s, document.createTextNode(u.text.slice(est)));
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  const parts = [u.state];
  if (u.serverFirstMs != null) parts.push(`first audio ${Math.round(u.serverFirstMs)} ms server`
    + (u.pageFirstMs != null ? ` / ${Math.round(u.pageFirstMs)} ms page` : ""));
  if (u.playedMs != null) parts.push(`played ${u.playedMs} ms`);
  if (u.bargeIn?.silentAt != null) parts.push(`barge-in stop ${Math.round(u.bargeIn.silentAt - u.bargeIn.decisionAt)} ms`);
  if (u.reason && u.reason !== "barge_in") parts.push(u.reason);
  meta.textContent = parts.join(" · ");
  el.append(text, meta);
}

// prefix of u.text heard so far, from time since the page first heard it (14 chars/s of letters/digits)
function spokenEstimate(u) {
  if (!u.pageAudioAt) return 0;
  let budget = (now() - u.pageAudioAt) / 1000 * CHARS_PER_S, i = 0;
  for (; i < u.text.length && budget > 0; i++) if (/[\p{L}\p{N}]/u.test(u.text[i])) budget -= 1;
  const cut = u.text.lastIndexOf(" ", i);
  return i >= u.text.length ? i : Math.max(0, cut);
}

// ---------- levels ------------------------------------------------------------------------------
function analyser(source) {
  const an = ctx.createAnalyser();
  an.fftSize = 1024;
  source.connect(an);
  an.buf = new Float32Array(an.fftSize);
  return an;
}
function dbfs(an) {
  if (!an) return -100;
  an.getFloatTimeDomainData(an.buf);
  let s = 0; for (const x of an.buf) s += x * x;
  return Math.max(-100, 10 * Math.log10(s / an.buf.length + 1e-12));
}
function setMeter(name, db) {
  $(`lvl-${name}`).style.width = `${Math.max(0, Math.min(100, (db + 60) / 60 * 100))}%`;
  $(`db-${name}`).textContent = db <= -99 ? "–" : `${db.toFixed(0)} dB`;
}

function tick() {
  const t = now(), a = dbfs(agentAn), m = dbfs(micAn);
  vg.levels.push([Math.round(t), +a.toFixed(1), +m.toFixed(1)]);
  if (vg.levels.length > 3000) vg.levels.splice(0, 1000);
  setMeter("agent", a); setMeter("mic", m);
  if (m > LOUD_DBFS && !micLoud) { micLoud = true; lastMicOnset = t; } else if (m < SILENT_DBFS) micLoud = false;
  const loud = a > LOUD_DBFS;
  if (loud && vg.firstLoudAt == null) vg.firstLoudAt = t;
  $("speaking").textContent = loud ? "agent speaking" : "idle";
  $("speaking").className = `speaking ${loud ? "on" : "muted"}`;
  for (const id of vg.order.slice(-4)) {
    const u = vg.utterances[id];
    if (u.state === "playing" && loud && !u.pageAudioAt) {
      u.pageAudioAt = t;
      if (u.firstTextAt != null) u.pageFirstMs = t - u.firstTextAt;
    }
    if (u.state === "playing") render(u);
    const bi = u.bargeIn;
    if (bi && bi.silentAt == null) {
      // silent from the last loud 20 ms tick after the decision, once 200 ms of silence followed it
      if (loud) bi.lastLoud = t;
      else if (t - bi.decisionAt > 200 && t - (bi.lastLoud ?? bi.decisionAt) > 200) {
        bi.silentAt = Math.max(bi.decisionAt, bi.lastLoud ?? bi.decisionAt);
        updateBargeIn(u); render(u);
      }
    }
  }
}

async function inboundStats() {
  if (!pc) return null;
  const out = {};
  (await pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "audio") {
      for (const k of ["packetsReceived", "packetsDiscarded", "packetsLost", "totalSamplesReceived", "concealedSamples",
        "silentConcealedSamples", "jitterBufferDelay", "jitterBufferEmittedCount"]) out[k] = r[k];
    }
  });
  return out;
}

// ?autoconnect=1 connects on load (tests, kiosks)
if (new URLSearchParams(location.search).get("autoconnect") === "1") connect();
