"""``voice-agent``: setup · replay · bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from voice_agent.errors import VoiceAgentError

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "jfk.flac"
"""The default replay input in a checkout (an installed copy has no samples: name a file)."""


def _log(msg: str) -> None:
    print(f"[voice-agent] {msg}", file=sys.stderr, flush=True)


def _engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument(
        "--stt-model", default=None,
        help="moonshine-base (English, default); whisper: tiny-en, base (multilingual), or a "
        "CTranslate2 dir"
    )
    g.add_argument("--vad", choices=["webrtc", "silero", "webrtc+silero"], default=None)
    g.add_argument(
        "--turn-model", default=None, choices=["smart-turn-v3", "off"],
        help="end-of-turn model that scores each pause (default smart-turn-v3; off: the "
        "transcript alone decides)",
    )  # fmt: skip
    g.add_argument(
        "--llm-profile",
        default=None,
        help="quality (Qwen2.5-Coder-1.5B, default), fast (0.5B), a manifest name or a .gguf",
    )
    g.add_argument(
        "--llm-url", action="append", default=None,
        help="remote OpenAI-compatible base URL; repeat it for endpoints to fail over to, in "
        "order (or VOICE_AGENT_LLM_URLS=url1,url2)",
    )  # fmt: skip
    g.add_argument("--llm-model", default=None, help="model name at --llm-url")
    g.add_argument("--llm-timeout", type=float, default=None, help="seconds to first token")
    g.add_argument(
        "--no-tools", action="store_true",
        help="offer the LLM no tools (by default: the current time, except on the fast "
        "profile; --knowledge adds search)",
    )  # fmt: skip


def _engine_config(args: argparse.Namespace) -> Any:
    from voice_agent.session.engine import EngineConfig

    return EngineConfig.from_env(
        stt_model=args.stt_model,
        vad=args.vad,
        turn_model=args.turn_model,
        llm_profile=args.llm_profile,
        llm_base_url=args.llm_url[0] if args.llm_url else None,
        llm_fallback_urls=tuple(args.llm_url[1:]) if args.llm_url else None,
        llm_model=args.llm_model,
        llm_timeout_s=args.llm_timeout,
        builtin_tools=False if args.no_tools else None,
    )


def _session_config(args: argparse.Namespace) -> Any:
    from voice_agent.session.driver import SessionConfig

    cfg = SessionConfig()
    if getattr(args, "min_silence", None) is not None:
        cfg.min_silence_s = args.min_silence / 1000
    if getattr(args, "max_silence", None) is not None:
        cfg.max_silence_s = args.max_silence / 1000
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voice-agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("setup", help="assemble and verify the embedded models; build llama-server")
    s.add_argument("--no-build", action="store_true", help="skip compiling llama-server")
    s.add_argument(
        "--minimal", action="store_true",
        help="only Moonshine base, tiny.en, the 0.5B LLM and the voice",
    )

    r = sub.add_parser("replay", help="stream a recorded file through the session core")
    r.add_argument(
        "input", nargs="?", default=None, help="WAV or FLAC (default: a checkout's sample)"
    )
    r.add_argument(
        "--fast", action="store_true", help="don't wait in real time while nothing is timed"
    )
    ch = r.add_mutually_exclusive_group()
    ch.add_argument("--channel", type=int, default=None, help="use this channel (0-based)")
    ch.add_argument("--mix", action="store_true", help="mix all channels (the default)")
    r.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    r.add_argument("--out", type=Path, default=None, help="write a stereo WAV: caller L, agent R")
    r.add_argument(
        "--min-silence", type=int, default=None, help="ms of silence ending a finished sentence"
    )
    r.add_argument("--max-silence", type=int, default=None, help="ms of silence ending any turn")
    _engine_args(r)

    v = sub.add_parser("serve", help="run the voice agent server (WebSocket + browser page)")
    v.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--max-message-bytes", type=int, default=64 * 1024)
    v.add_argument(
        "--max-sessions", type=int, default=None,
        help="calls at once, past which a call is refused (default: the measured capacity "
        "of the LLM profile on this many cores; see the README)",
    )  # fmt: skip
    v.add_argument(
        "--max-sessions-per-key", type=int, default=None,
        help="calls at once for one API key, its tokens included (default: no limit but "
        "--max-sessions)",
    )  # fmt: skip
    v.add_argument(
        "--drain-grace", type=float, default=20.0, help="seconds live replies get on SIGTERM"
    )
    v.add_argument(
        "--ice-server",
        action="append",
        default=[],
        help="STUN/TURN URL for WebRTC (repeatable); none by default",
    )
    v.add_argument("--max-peers", type=int, default=8, help="concurrent WebRTC peer connections")
    v.add_argument(
        "--public-url", default=None, help="public base URL (https://host) for telephony webhooks"
    )
    v.add_argument(
        "--twilio-auth-token",
        default=None,
        help="require Twilio-signed webhooks (also VOICE_AGENT_TWILIO_AUTH_TOKEN)",
    )
    v.add_argument(
        "--audiosocket",
        default=None,
        metavar="HOST:PORT",
        help="also listen for Asterisk AudioSocket calls on this TCP address",
    )
    v.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="require this key (repeatable; also VOICE_AGENT_API_KEYS=k1,k2) on every endpoint "
        "but /healthz, /readyz and the page; the page calls with a token from POST /v1/tokens",
    )
    v.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        help="refuse browser WebSockets and POSTs from any other Origin (repeatable)",
    )
    v.add_argument(
        "--db",
        default=None,
        help="conversation store: a SQLite file path or a postgresql:// URL "
        "(also VOICE_AGENT_DB; default: voice-agent.db in the cache dir)",
    )
    v.add_argument(
        "--redis-url",
        default=None,
        help="keep text-chat event streams in Redis, shared by every server process on it "
        "(also VOICE_AGENT_REDIS_URL); default: in memory",
    )
    v.add_argument(
        "--knowledge",
        type=Path,
        default=None,
        metavar="DIR",
        help="a folder of markdown files the agent searches (BM25) to answer",
    )
    v.add_argument(
        "--sse-heartbeat",
        type=float,
        default=15.0,
        help="seconds between ': ping' comments on text-chat event streams",
    )
    v.add_argument(
        "--webrtc-ip",
        action="append",
        default=[],
        help="local address for WebRTC host candidates (repeatable); default: every interface",
    )
    _engine_args(v)

    c = sub.add_parser(
        "call", help="call a telephony bridge as the provider would, and record what is heard"
    )
    c.add_argument(
        "--protocol",
        required=True,
        choices=["twilio", "telnyx", "plivo", "vonage", "audiosocket"],
    )
    c.add_argument("url", help="the stream's WebSocket URL, or HOST:PORT for AudioSocket")
    c.add_argument("input", help="the caller's audio (WAV or FLAC, any rate)")
    c.add_argument("--out", type=Path, default=None, help="stereo WAV: caller L, heard R")
    c.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    c.add_argument(
        "--rate",
        type=int,
        choices=[8000, 16000],
        default=8000,
        help="16000: L16 at 16 kHz (Telnyx, Plivo, Vonage)",
    )
    c.add_argument("--linger", type=float, default=4.0, help="seconds of quiet before hanging up")
    c.add_argument("--max-seconds", type=float, default=120.0, help="hang up after this long")
    c.add_argument(
        "--dtmf",
        action="append",
        default=[],
        metavar="SECONDS:DIGIT",
        help="press a key at this time (repeatable), e.g. 2.5:5",
    )

    b = sub.add_parser("bench", help="latency benchmark over real and synthetic utterances")
    b.add_argument("--json", type=Path, default=Path("bench.json"), help="write figures here")
    b.add_argument("--limit", type=int, default=None, help="run only the first N utterances")
    b.add_argument(
        "--server",
        default=None,
        help="bench a running server over its WebSocket (host:port or ws URL)",
    )
    b.add_argument(
        "--transports",
        action="store_true",
        help="WebSocket and WebRTC side by side (in-process server on 127.0.0.1), and pacing",
    )
    b.add_argument(
        "--answers",
        action="store_true",
        help="typed questions: invented facts, general knowledge, reply length",
    )
    b.add_argument(
        "--no-honesty-guard", action="store_true",
        help="with --answers: let the LLM answer every question (no fixed honest line)",
    )  # fmt: skip
    b.add_argument(
        "--first-chunk-words", type=int, default=None,
        help="the most words of a reply's first spoken chunk (default: the session's)",
    )  # fmt: skip
    b.add_argument(
        "--no-prefill", action="store_true",
        help="do not read the prompt into the LLM's cache ahead of the reply (to compare)",
    )  # fmt: skip
    b.add_argument(
        "--turns",
        action="store_true",
        help="end of turn on real speech with pauses: cut-offs against endpoint latency",
    )
    b.add_argument(
        "--turns-dir", type=Path, default=None,
        help="with --turns: also every WAV/FLAC here, one utterance each",
    )  # fmt: skip
    b.add_argument(
        "--telephony",
        action="store_true",
        help="phone calls through the Twilio and AudioSocket bridges at 8 kHz",
    )
    b.add_argument(
        "--text",
        action="store_true",
        help="text chat over SSE: time to the first status, the first token, tool results",
    )
    b.add_argument(
        "--pacing-s", type=float, default=60.0, help="seconds of real-time pacing to measure"
    )
    b.add_argument(
        "--callers", default=None, metavar="N[,N...]",
        help="N WebSocket callers at once, each asking one question (e.g. 1,2,4,6,8)",
    )  # fmt: skip
    b.add_argument(
        "--stagger", type=float, default=0.0,
        help="with --callers: start caller k at k x this many seconds (default: all at once)",
    )  # fmt: skip
    b.add_argument(
        "--rounds", type=int, default=3, help="with --callers: rounds of each N"
    )
    b.add_argument(
        "--soak", action="store_true",
        help="many callers for minutes (LLM double): lost transcripts, RSS slope, tasks",
    )  # fmt: skip
    b.add_argument("--soak-sessions", type=int, default=20, help="with --soak: callers")
    b.add_argument("--soak-seconds", type=float, default=300.0, help="with --soak: length")
    b.add_argument(
        "--soak-call-seconds", type=float, default=60.0,
        help="with --soak: each caller hangs up after this long and calls again",
    )  # fmt: skip
    b.add_argument(
        "--barge-in",
        action="store_true",
        help="interjections, backchannels and noise over the agent's speech (WebSocket)",
    )
    b.add_argument(
        "--barge-min-ms",
        type=int,
        default=None,
        help="with --barge-in: speech before the first words check (default 200)",
    )
    _engine_args(b)
    return parser


async def _replay(args: argparse.Namespace) -> int:
    from voice_agent.audio.files import load_audio_16k, write_wav
    from voice_agent.core.clock import LoopClock
    from voice_agent.replay import format_turns, replay
    from voice_agent.runtime import open_engine

    if args.input is None:
        if not SAMPLE.exists():
            raise VoiceAgentError("no input file: name a WAV or FLAC file to replay")
        args.input = str(SAMPLE)
    pcm = load_audio_16k(args.input, args.channel)
    async with open_engine(_engine_config(args), _log) as engine:
        _log(
            f"replaying {args.input} ({len(pcm) / 16000:.1f} s, "
            f"{'fast' if args.fast else 'real-time'})"
        )
        result = await replay(
            engine, pcm, LoopClock(), fast=args.fast, config=_session_config(args)
        )
    report = result.report | {"input": str(args.input)}
    print(format_turns(report))
    if not report["turns"]:
        print("no turns: the VAD heard no speech in the input")
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
        _log(f"report written to {args.report}")
    if args.out:
        write_wav(args.out, result.stereo())
        _log(f"conversation written to {args.out} (caller left, agent right)")
    return 0


async def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from voice_agent.capacity import default_max_sessions, llm_slots
    from voice_agent.httplimits import timed_h11
    from voice_agent.server import DrainingServer, ServerConfig, create_app

    engine_config = _engine_config(args)
    max_sessions = args.max_sessions or default_max_sessions(engine_config)
    engine_config.llm_parallel = llm_slots(max_sessions)
    config = ServerConfig(
        max_message_bytes=args.max_message_bytes,
        max_sessions=max_sessions,
        max_sessions_per_key=args.max_sessions_per_key,
        drain_grace_s=args.drain_grace,
        ice_servers=args.ice_server,
        max_peers=args.max_peers,
        ice_addresses=args.webrtc_ip,
        public_url=args.public_url,
        twilio_auth_token=args.twilio_auth_token
        or os.environ.get("VOICE_AGENT_TWILIO_AUTH_TOKEN")
        or None,
        audiosocket=_host_port(args.audiosocket) if args.audiosocket else None,
        db=args.db,
        api_keys=args.api_key
        + [k.strip() for k in os.environ.get("VOICE_AGENT_API_KEYS", "").split(",") if k.strip()],
        allowed_origins=args.allowed_origin,
        redis_url=args.redis_url or os.environ.get("VOICE_AGENT_REDIS_URL") or None,
        knowledge_dir=args.knowledge,
        sse_heartbeat_s=args.sse_heartbeat,
    )
    app = create_app(engine_config, config)
    uv = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ws_max_size=args.max_message_bytes,
        http=timed_h11(config.header_timeout_s),
        log_level="info",
        lifespan="on",
    )
    _log(
        f"serving on http://{args.host}:{args.port} (models load in the background); "
        f"{max_sessions} calls at once"
    )
    await DrainingServer(uv, app.state.va).serve()
    return 0


async def _call(args: argparse.Namespace) -> int:
    from websockets.exceptions import WebSocketException

    from voice_agent.audio.files import load_audio_16k, write_wav
    from voice_agent.transports.telephony.phone import dial

    if args.protocol in ("twilio", "audiosocket") and args.rate != 8000:
        raise VoiceAgentError(f"{args.protocol} carries 8 kHz audio only")
    keys: dict[float, str] = {}
    for spec in args.dtmf:
        at, _, key = spec.partition(":")
        try:
            keys[float(at)] = key
        except ValueError:
            raise VoiceAgentError(f"--dtmf takes SECONDS:DIGIT, got {spec!r}") from None
    mic = load_audio_16k(args.input, None)
    _log(f"calling {args.url} as {args.protocol} ({len(mic) / 16000:.1f} s of caller audio)")
    try:
        call = await dial(
            args.protocol, args.url, mic, args.rate, args.linger, args.max_seconds, keys
        )
    except (OSError, ValueError, WebSocketException) as exc:
        raise VoiceAgentError(f"could not call {args.url}: {exc}") from None
    report = call.report() | {"input": str(args.input), "url": args.url}
    for r in report["replies"]:
        _log(
            f"agent audio {r['agent_start_s']:.2f}-{r['agent_end_s']:.2f} s, "
            f"{r['voice_to_voice_ms']} ms after the caller stopped"
        )
    for b in report["barge_ins"]:
        _log(f"caller talked over the agent at {b['onset_s']:.2f} s: quiet {b['stop_ms']} ms later")
    _log(
        f"marks answered {report['marks_answered']}, clears {report['clears']}, "
        f"errors {len(report['errors'])}" + (", agent hung up" if call.hung_up_by_agent else "")
    )
    print(json.dumps(report, indent=2))
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
    if args.out:
        write_wav(args.out, call.stereo())
        _log(f"what was said and heard written to {args.out} (caller left, heard right)")
    return 0


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise VoiceAgentError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _find_benchmarks() -> None:
    """The benchmarks live in the checkout (``benchmarks/``), outside the product package:
    make them importable from the checkout this package was installed from."""
    import importlib.util

    if importlib.util.find_spec("benchmarks") is None:
        root = Path(__file__).resolve().parent.parent
        if not (root / "benchmarks" / "__init__.py").exists():
            raise VoiceAgentError(
                "voice-agent bench needs the benchmarks/ folder of a checkout",
                "clone the repository and run `bash scripts/install.sh` there",
            )
        sys.path.insert(0, str(root))
    if importlib.util.find_spec("jiwer") is None:
        raise VoiceAgentError("the bench needs jiwer", "pip install -e '.[bench]'")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from voice_agent.core.memory import limit_malloc_arenas

    limit_malloc_arenas()  # before any model thread starts
    try:
        if args.command == "setup":
            from voice_agent.models import setup

            stt = ["moonshine-base", "tiny-en"] + ([] if args.minimal else ["base"])
            llm = (
                ["qwen2.5-coder-0.5b"]
                if args.minimal
                else ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
            )
            setup(stt, llm, ["joe-medium"], build=not args.no_build, log=_log)
            return 0
        if args.command == "replay":
            return asyncio.run(_replay(args))
        if args.command == "serve":
            return asyncio.run(_serve(args))
        if args.command == "call":
            return asyncio.run(_call(args))
        if args.command == "bench":
            _find_benchmarks()
            from benchmarks.latency import run_bench, run_server_bench
            from benchmarks.transports import run_transport_bench

            if args.soak:
                from benchmarks.soak import run_soak_bench

                return asyncio.run(run_soak_bench(args, _engine_config(args), _log))
            if args.callers:
                from benchmarks.callers import run_callers_bench

                return asyncio.run(run_callers_bench(args, _engine_config(args), _log))
            if args.barge_in:
                from benchmarks.barge import run_barge_bench

                return asyncio.run(run_barge_bench(args, _engine_config(args), _log))
            if args.transports:
                return asyncio.run(run_transport_bench(args, _engine_config(args), _log))
            if args.answers:
                from benchmarks.answers import run_answers_bench

                return asyncio.run(run_answers_bench(args, _engine_config(args), _log))
            if args.turns:
                from benchmarks.turns import run_turns_bench

                return asyncio.run(run_turns_bench(args, _engine_config(args), _log))
            if args.text:
                from benchmarks.text import run_text_bench

                return asyncio.run(run_text_bench(args, _engine_config(args), _log))
            if args.telephony:
                from benchmarks.telephony import run_telephony_bench

                return asyncio.run(run_telephony_bench(args, _engine_config(args), _log))
            if args.server:
                return asyncio.run(run_server_bench(args, _log))
            return asyncio.run(run_bench(args, _engine_config(args), _log))
    except VoiceAgentError as exc:
        print(f"voice-agent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
