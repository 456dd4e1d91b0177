// Plays agent audio from a ring buffer and reports its playout cursor:
// {gen, played} = samples of generation `gen` that actually reached the speakers.
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = sampleRate * 30;             // 30 s ring
    this.ring = new Float32Array(this.size);
    this.gens = new Int32Array(this.size);
    this.read = 0;
    this.write = 0;
    this.played = {};                         // gen -> samples played
    this.dropBelow = 0;                       // generations below this are never played
    this.held = -1;                           // a paused generation: its audio waits
    this.sinceReport = 0;
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.type === "push") {
        if (m.gen < this.dropBelow) return;
        const s = m.samples;
        for (let i = 0; i < s.length; i++) {
          if (this.write - this.read >= this.size) break;   // full: drop the rest
          const k = this.write % this.size;
          this.ring[k] = s[i] / 32768;
          this.gens[k] = m.gen;
          this.write++;
        }
      } else if (m.type === "clear") {
        this.dropBelow = Math.max(this.dropBelow, m.gen + 1);
        this.read = this.write;
        this.held = -1;
        this.report();
      } else if (m.type === "pause") {      // the caller began to talk: hold, don't drop
        this.held = m.gen;
        this.report();
      } else if (m.type === "resume") {
        if (this.held === m.gen) this.held = -1;
      }
    };
  }
  report() {
    this.port.postMessage({ type: "cursor", played: this.played, buffered: this.write - this.read });
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    for (let i = 0; i < out.length; i++) {
      if (this.read < this.write && this.gens[this.read % this.size] !== this.held) {
        const k = this.read % this.size;
        const gen = this.gens[k];
        if (gen < this.dropBelow) { out[i] = 0; this.read++; continue; }
        out[i] = this.ring[k];
        this.played[gen] = (this.played[gen] || 0) + 1;
        this.read++;
      } else {
        out[i] = 0;
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.sinceReport += out.length;
    if (this.sinceReport >= sampleRate / 10) { this.sinceReport = 0; this.report(); }
    return true;
  }
}
registerProcessor("playback", PlaybackProcessor);
