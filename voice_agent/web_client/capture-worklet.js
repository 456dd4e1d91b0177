// Captures microphone audio and posts 20 ms frames of PCM16 (Int16Array) at the context rate.
// When the source gives nothing (a track that ended or stalled), it sends silence: the
// server's VAD must keep hearing time pass, or a turn would never end.
class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = Math.round(sampleRate / 50);
    this.buf = new Int16Array(this.frame);
    this.n = 0;
  }
  process(inputs) {
    const input = inputs[0];
    const ch = input && input[0] ? input[0] : null;
    const n = ch ? ch.length : 128;
    {
      for (let i = 0; i < n; i++) {
        const s = ch ? Math.max(-1, Math.min(1, ch[i])) : 0;
        this.buf[this.n++] = s < 0 ? s * 32768 : s * 32767;
        if (this.n === this.frame) {
          this.port.postMessage(this.buf.buffer, [this.buf.buffer]);
          this.buf = new Int16Array(this.frame);
          this.n = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor("capture", CaptureProcessor);
