// Voice input: the server's transcripts of the mic (docs/protocol.md, "Voice in") on the page. A turn's
// partial hypotheses show as it is spoken; its final transcript, if not empty, is handed to `onTurn` (the LLM
// bridge asks it as if typed). Empty transcripts and recognizer errors are shown quietly, never handed on.
// Plain ES module, no dependency; the state lives on window.vg.voice for tests and debugging.

const STT_CODES = new Set(["stt_unavailable", "stt_failed", "stt_busy"]);
const $ = (id) => document.getElementById(id);

export class VoiceInput {
  // send(transcriptionConfig) -> bool; onTurn(text); onPending() re-renders the pending user bubble
  constructor({ send, onTurn, onPending, bridgeOn }) {
    Object.assign(this, { send, onTurn, onPending, bridgeOn });
    this.stt = undefined;      // the server's recognizer {backend, model}; null: none; undefined: not known yet
    this.choice = null;        // the user's tick, once they touched the box (kept across reconnects)
    this.serverEnabled = null; // the session's transcription.enabled as the server last said
    this.connected = false;
    this.pending = null;       // {turn_id, text}: the partial hypothesis of the turn being spoken
    this.ignored = new Set();  // turns that started inside the echo guard (most likely the agent's own voice)
    this.done = new Set();     // turns whose final (or error) arrived
    this.log = { partials: [], finals: [], asked: [], dropped: [] };
    $("voice-in").addEventListener("change", () => this.toggled());
    this.render();
  }

  get available() { return !!this.stt; }
  get on() { return this.available && $("voice-in").checked; }

  // /healthz's "stt" (or a session's): {backend, model} | null
  setServer(stt) {
    if (stt === undefined) return;
    this.stt = stt;
    this.render();
  }

  // session.created: `stt` if the server says it, else a transcription config means a recognizer.
  connect(created) {
    this.connected = true;
    this.pending = null; this.ignored.clear(); this.done.clear();
    const tr = created.config?.transcription;
    if ("stt" in created) this.stt = created.stt;
    else if (this.stt === undefined) this.stt = tr?.enabled ? {} : null;  // no /healthz answer: the config says
    this.serverEnabled = tr ? tr.enabled !== false : this.available;  // on by default with a recognizer
    if (this.available) {  // the user's tick, kept across reconnects; the rest stays as the session has it
      const want = this.choice ?? this.serverEnabled;
      $("voice-in").checked = want;
      if (want !== this.serverEnabled) this.send({ enabled: want });
    }
    this.render();
  }

  disconnect() {
    this.connected = false;
    this.pending = null;
    this.render();
    this.onPending();
  }

  toggled() {
    this.choice = $("voice-in").checked;
    if (this.connected && this.available) this.send({ enabled: this.choice });
    if (!this.choice) { this.pending = null; this.onPending(); }
    this.render();
  }

  // a server event; true when it was voice input's alone (the caller does nothing more with it)
  handle(m) {
    switch (m.type) {
      case "session.updated":
        if (m.config?.transcription) {
          this.serverEnabled = m.config.transcription.enabled !== false;
          if (this.available) $("voice-in").checked = this.serverEnabled;
          this.render();
        }
        return false;
      case "user.speech_started":
        if (m.ignored && m.turn_id) this.ignored.add(m.turn_id);
        if (this.on) this.state(m.ignored ? "speech during the echo guard: not asked" : "listening…");
        return false;
      case "user.speech_stopped":
        if (this.on && this.pending) this.state("transcribing…");
        return false;
      case "user.transcript.delta":
        this.partial(m);
        return true;
      case "user.transcript":
        this.final(m);
        return true;
      case "error":
        if (!STT_CODES.has(m.code)) return false;
        this.failed(m);
        return true;
      default:
        return false;
    }
  }

  partial(m) {
    if (!this.on || this.done.has(m.turn_id)) return;
    this.pending = { turn_id: m.turn_id, text: m.text };
    this.log.partials.push({ turn_id: m.turn_id, text: m.text, at: m.at });
    this.heard(m.text, true);
    this.onPending();
  }

  final(m) {
    this.done.add(m.turn_id);
    if (this.pending?.turn_id === m.turn_id) this.pending = null;
    if (!this.on) { this.onPending(); return; }
    const text = (m.text ?? "").trim();
    this.log.finals.push({ turn_id: m.turn_id, text, at: m.at });
    if (!text) {
      this.drop(m, "heard nothing to ask");
    } else if (this.ignored.has(m.turn_id)) {
      this.heard(text, false);
      this.drop(m, "started during the echo guard: not asked");
    } else {
      this.heard(text, false);
      if (this.bridgeOn()) {
        this.log.asked.push({ turn_id: m.turn_id, text, at: m.at });
        this.state("asked the LLM");
        this.onTurn(text);
      } else {
        this.state("turn on the LLM bridge to ask it");
      }
    }
    this.onPending();
  }

  failed(m) {
    if (m.turn_id) this.done.add(m.turn_id);
    if (this.pending && (!m.turn_id || this.pending.turn_id === m.turn_id)) this.pending = null;
    if (m.code === "stt_unavailable") { this.stt = null; $("voice-in").checked = false; this.render(); }
    this.drop(m, `not transcribed (${m.code}: ${m.message})`);
    this.onPending();
  }

  drop(m, why) {
    this.log.dropped.push({ turn_id: m.turn_id ?? null, code: m.code ?? null, why, at: m.at });
    this.state(why);
  }

  heard(text, partial) {
    const el = $("heard");
    el.textContent = text;
    el.classList.toggle("partial", partial);
  }

  state(text) { $("voice-state").textContent = text; }

  render() {
    const box = $("voice-in");
    box.disabled = !this.available;
    if (!this.available) box.checked = false;
    let help;
    if (this.stt === undefined) help = "Connect to find out whether the server has a speech recognizer.";
    else if (!this.stt) help = "Unavailable: this server has no speech recognizer (start it with "
      + "`voicegate serve --stt faster-whisper`).";
    else if (!box.checked) help = "Off: the server does not transcribe your speech.";
    else help = `On: speak, then pause; ${this.bridgeOn() ? "each turn is asked to the LLM"
      : "turn on the LLM bridge below to ask what you say"}.`;
    const model = this.stt?.model ? ` Recognizer: ${this.stt.backend} (${this.stt.model}).` : "";
    $("voice-in-help").textContent = help + (this.available ? model : "");
    if (!box.checked) { this.heard("", false); this.state(""); }
  }
}
