"""onnxruntime session options shared by every model that runs on it (Moonshine, piper,
Smart Turn, Silero)."""

from __future__ import annotations

import onnxruntime


def session_options(threads: int) -> onnxruntime.SessionOptions:
    """``threads`` intra-op threads, one inter-op thread, no spinning, and no memory
    patterns.

    By default onnxruntime's worker threads spin for a while after each operator, waiting
    for the next one: on 2 cores that spinning takes the CPU from llama-server and from the
    other models. Measured here (2 cores, the 1.5B model decoding beside it): Moonshine's
    pass over 4 s of jfk.flac 175–207 ms spinning, 115–133 ms not, while the LLM decoded
    7.7–9.4 tokens/s beside the spinning one and 12.1–13.7 beside the other; piper on one
    sentence beside the LLM 220–287 ms against 205–212 ms, the LLM 9.4–12.3 against
    13.2–13.8 tokens/s. Alone, neither model was slower without spinning.

    A memory pattern is onnxruntime's plan of one run's buffers, kept for each set of input
    shapes it has seen and never dropped. Piper's input is the sentence's phonemes, so
    nearly every sentence is a new shape. Measured (piper, 200 sentences of 2-25 words, one
    process): RSS 272 -> 459 MB with patterns, still stepping up at a new longest sentence,
    and 272 -> 376 MB without, flat after 40 sentences. Neither piper (250 ms a sentence)
    nor Smart Turn (55 ms a pass) was slower without them; Moonshine's RSS was flat
    either way."""
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = False
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts
