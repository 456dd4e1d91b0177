"""voice-agent's benchmarks, outside the product package: ``voice-agent bench``.

- :mod:`benchmarks.corpus`: the utterances, interjections and noises (one corpus);
- :mod:`benchmarks.stats`: percentiles, WER and the machine description (one stats helper);
- :mod:`benchmarks.harness`: an in-process server and the WebSocket and WebRTC callers
  that time one utterance (one harness);
- :mod:`benchmarks.latency`, :mod:`benchmarks.transports`, :mod:`benchmarks.barge`: the
  three benches.

They need the ``bench`` extra (jiwer) and a checkout (the audio in ``samples/``).
"""
