"""Property tests of every parser a client's bytes reach: each one returns, or raises
only its documented error, for any input, and never hangs.

Derandomized (the same examples every run) and without an example database, so the
suite stays deterministic; the deadline is a hang detector, far above any parse. The
example counts are in the README."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voice_agent.chat.events import BadLastEventId, parse_last_event_id
from voice_agent.llm.base import TextDelta, ToolCall
from voice_agent.llm.tools import ContentToolCallParser, parse_tool_calls
from voice_agent.text.sentences import SentenceSplitter
from voice_agent.transports.telephony.audiosocket import AudioSocketStream, frame
from voice_agent.transports.telephony.media import TelephonyInputError
from voice_agent.transports.telephony.routes import PROTOCOLS
from voice_agent.transports.webrtc import OfferError, check_offer
from voice_agent.transports.websocket import (
    SUPPORTED_RATES,
    InboundAudio,
    ProtocolError,
    parse_client_message,
    parse_start,
)

EXAMPLES = {
    "ws_start": 600,
    "ws_control": 600,
    "pcm": 300,
    "telephony": 400,
    "audiosocket": 400,
    "offer": 400,
    "last_event_id": 400,
    "tool_calls": 500,
    "sentences": 500,
}
"""Examples per parser (the README's fuzzing table)."""


def fuzz(name: str) -> Any:
    return settings(
        max_examples=EXAMPLES[name],
        derandomize=True,
        database=None,
        deadline=timedelta(seconds=5),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from([16000, 8000, 48000, 24000, 44100, "pcm16", "offer", "v=0"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
hostile_json = st.sampled_from(
    [
        "[" * 30_000 + "]" * 30_000,  # RecursionError in json.loads
        '{"a":' * 30_000 + "1" + "}" * 30_000,
        "1" * 5000,  # an int of more digits than Python converts
        '{"type": "session.start", "sample_rate": ' + "9" * 5000 + "}",
        '{"type": "text", "text": "' + "\\ud800" + '"}',
        "\x00",
        "",
        "null",
    ]
)


def with_type(types: list[str], fields: list[str]) -> st.SearchStrategy[str]:
    """JSON objects with a plausible ``type`` and fields of any value."""
    return st.builds(
        lambda t, extra: json.dumps({"type": t, **extra}),
        st.sampled_from(types) | st.text(max_size=8),
        st.dictionaries(st.sampled_from(fields), json_values, max_size=len(fields)),
    )


ws_text = (
    st.text(max_size=200)
    | json_values.map(json.dumps)
    | hostile_json
    | with_type(
        ["session.start", "text", "playout", "interrupt", "session.end"],
        ["sample_rate", "output_sample_rate", "encoding", "session_id", "conversation_id",
         "text", "gen", "samples"],
    )
)


@fuzz("ws_start")
@given(ws_text)
def test_session_start_raises_only_protocol_errors(text: str) -> None:
    try:
        opts = parse_start(text)
    except ProtocolError as exc:
        assert exc.code in (4400, 4415) and len(exc.reason) < 200
        return
    assert opts.sample_rate in SUPPORTED_RATES and opts.output_sample_rate in SUPPORTED_RATES


@fuzz("ws_control")
@given(ws_text)
def test_control_messages_raise_only_value_errors(text: str) -> None:
    try:
        msg = parse_client_message(text)
    except ValueError as exc:
        assert len(str(exc)) < 200
        return
    assert msg["type"] in ("text", "playout", "interrupt", "session.end")


@fuzz("pcm")
@given(st.sampled_from(SUPPORTED_RATES), st.lists(st.binary(max_size=4000), max_size=5))
def test_pcm_frames_of_any_length_convert_or_raise_value_error(
    rate: int, chunks: list[bytes]
) -> None:
    inbound = InboundAudio(rate)
    for data in chunks:
        try:
            pcm = inbound.convert(data)
        except ValueError:
            assert len(data) % 2 == 1
            continue
        assert pcm.dtype.name == "int16"


def telephony_message(provider: str) -> st.SearchStrategy[str | bytes]:
    payload = st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()) | st.text(
        max_size=30
    )
    event = st.sampled_from(
        ["connected", "start", "media", "dtmf", "mark", "stop", "clear", "websocket:connected"]
    ) | st.text(max_size=8)
    fmt = st.fixed_dictionaries(
        {},
        optional={
            "encoding": st.sampled_from(["audio/x-mulaw", "audio/x-l16", "PCMU", "L16"])
            | scalars,
            "sampleRate": st.sampled_from([8000, 16000]) | scalars,
            "sample_rate": st.sampled_from([8000, 16000]) | scalars,
        },
    )
    start = st.fixed_dictionaries(
        {},
        optional={
            "streamSid": st.text(max_size=5) | scalars,
            "callSid": st.text(max_size=5) | scalars,
            "stream_id": scalars,
            "call_control_id": scalars,
            "mediaFormat": fmt | json_values,
            "media_format": fmt | json_values,
            "tracks": json_values,
            "customParameters": json_values,
        },
    )
    structured = st.builds(
        lambda ev, body, pay, extra: json.dumps(
            {"event": ev, "start": body, "media": {"payload": pay}, **extra}
        ),
        event,
        start,
        payload,
        st.dictionaries(st.sampled_from(["streamSid", "stream_id", "dtmf", "mark"]), json_values),
    )
    return structured | st.text(max_size=100) | json_values.map(json.dumps) | hostile_json | (
        st.binary(max_size=700)
    )


@fuzz("telephony")
@given(st.sampled_from(sorted(PROTOCOLS)), st.data())
def test_telephony_messages_raise_only_telephony_input_errors(provider: str, data: Any) -> None:
    stream = PROTOCOLS[provider]()
    for message in data.draw(st.lists(telephony_message(provider), max_size=6)):
        try:
            stream.receive(message)
        except TelephonyInputError as exc:
            assert len(str(exc)) < 200
            if exc.fatal:
                return


audiosocket_frames = st.one_of(
    st.binary(max_size=40),
    st.builds(frame, st.sampled_from([0x00, 0x01, 0x03, 0x10, 0xFF]) | st.integers(0, 255),
              st.binary(max_size=400)),
    st.builds(lambda u: frame(0x01, u), st.binary(min_size=16, max_size=16)),
    st.builds(lambda k, n, p: bytes([k]) + n.to_bytes(2, "big") + p,
              st.integers(0, 255), st.integers(0, 65535), st.binary(max_size=60)),
)


@fuzz("audiosocket")
@given(st.lists(audiosocket_frames, max_size=6))
def test_audiosocket_frames_raise_only_telephony_input_errors(frames: list[bytes]) -> None:
    stream = AudioSocketStream()
    for data in frames:
        try:
            stream.receive(data)
        except TelephonyInputError as exc:
            if exc.fatal:
                return


sdp = st.builds(
    lambda head, lines: head + "\r\n".join(lines),
    st.sampled_from(["v=0\r\n", "v=0\n", " v=0\r\n", "", "v=1\r\n"]),
    st.lists(
        st.sampled_from(["o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                         "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=sendrecv", "c=IN IP4 0.0.0.0"])
        | st.text(max_size=30),
        max_size=12,
    ),
)


@fuzz("offer")
@given(
    json_values
    | st.fixed_dictionaries({"sdp": sdp | scalars}, optional={"type": scalars})
    | st.builds(lambda n: {"sdp": "v=0\r\n" + "m=audio 9 RTP/AVP 0\r\n" * n}, st.integers(0, 3000))
)
def test_offer_bodies_raise_only_offer_errors(body: Any) -> None:
    try:
        sdp_text = check_offer(body)
    except OfferError as exc:
        assert exc.status in (400, 413) and len(exc.message) < 200
        return
    assert sdp_text.lstrip().startswith("v=0") and len(sdp_text) <= 64 * 1024


@fuzz("last_event_id")
@given(st.none() | st.text(max_size=30) | st.integers(-(10**30), 10**30).map(str))
def test_last_event_id_is_a_count_or_a_bad_last_event_id(header: str | None) -> None:
    try:
        n = parse_last_event_id(header)
    except BadLastEventId:
        return
    assert 0 <= n < 10**18


tool_text = (
    st.text(max_size=200)
    | json_values.map(json.dumps)
    | st.builds(
        lambda name, args, wrap: wrap.format(json.dumps({"name": name, "arguments": args})),
        st.sampled_from(["current_time", "search_knowledge"]) | st.text(max_size=10),
        json_values,
        st.sampled_from(["{}", "<tool_call>{}</tool_call>", "```json\n{}\n```", "{{{}}}",
                         "Sure. {}", "{} and then some words"]),
    )
    | hostile_json
)


@fuzz("tool_calls")
@given(tool_text, st.integers(1, 40), st.booleans())
def test_tool_call_parsing_never_raises_and_loses_no_words(
    text: str, cut: int, known_only: bool
) -> None:
    known = {"current_time"} if known_only else None
    calls = parse_tool_calls(text, known)
    assert calls is None or all(isinstance(c, ToolCall) for c in calls)
    parser = ContentToolCallParser(known)
    events = []
    text = text[:8000]  # a streamed reply is bounded by the LLM's max_tokens (160)
    for i in range(0, len(text), cut):  # streamed in chunks of any size
        events += parser.feed(text[i : i + cut])
    events += parser.finish()
    said = "".join(e.text for e in events if isinstance(e, TextDelta))
    if not any(isinstance(e, ToolCall) for e in events):
        assert said.split() == text.split() or said.strip() == ""


prose = st.lists(
    st.sampled_from([*list("abcdefghij ABC 0123 .,?!'\n"), "  ", ". ", "? "]), max_size=300
).map("".join)


@fuzz("sentences")
@given(st.text(max_size=400) | prose, st.integers(1, 30), st.integers(1, 12))
def test_the_sentence_splitter_never_raises_and_keeps_every_word_of_prose(
    text: str, cut: int, first_words: int
) -> None:
    splitter = SentenceSplitter(first_max_words=first_words)
    out: list[str] = []
    for i in range(0, len(text), cut):
        out += splitter.feed(text[i : i + cut])
    out += splitter.flush()
    assert all(any(c.isalnum() for c in s) for s in out)  # nothing unspeakable
    if set(text) <= set("abcdefghij ABC0123.,?!'\n"):
        # plain prose: every word with a letter or digit comes out, in order
        assert re.findall(r"[A-Za-z0-9]+", " ".join(out)) == re.findall(r"[A-Za-z0-9]+", text)
