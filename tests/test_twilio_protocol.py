"""The Twilio Media Streams protocol, sans-I/O: message shapes as in Twilio's docs
(https://www.twilio.com/docs/voice/media-streams/websocket-messages), written out as data."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from voice_agent.audio.g711 import ulaw_decode, ulaw_encode
from voice_agent.transports.telephony.media import (
    MULAW_8K,
    Connected,
    Dtmf,
    Media,
    Played,
    Start,
    Stop,
    TelephonyInputError,
)
from voice_agent.transports.telephony.twilio import TwilioStream

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": "AC00000000000000000000000000000001",
        "streamSid": SID,
        "callSid": "CA00000000000000000000000000000002",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"},
    },
    "streamSid": SID,
}
SILENCE_20MS = base64.b64encode(b"\xff" * 160).decode()
MEDIA = {
    "event": "media",
    "sequenceNumber": "3",
    "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": SILENCE_20MS},
    "streamSid": SID,
}
DTMF = {
    "event": "dtmf",
    "streamSid": SID,
    "sequenceNumber": "5",
    "dtmf": {"track": "inbound_track", "digit": "1"},
}
MARK = {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "gen1-s2"}}
STOP = {
    "event": "stop",
    "sequenceNumber": "5",
    "streamSid": SID,
    "stop": {"accountSid": "AC00000000000000000000000000000001",
             "callSid": "CA00000000000000000000000000000002"},
}  # fmt: skip


def started() -> TwilioStream:
    s = TwilioStream()
    s.receive(json.dumps(CONNECTED))
    s.receive(json.dumps(START))
    return s


def test_the_documented_messages_parse_into_typed_events() -> None:
    s = TwilioStream()
    assert s.receive(json.dumps(CONNECTED)) == Connected("Call 1.0.0")
    start = s.receive(json.dumps(START))
    assert start == Start(
        stream_id=SID,
        call_id="CA00000000000000000000000000000002",
        codec=MULAW_8K,
        parameters={"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"},
        tracks=("inbound",),
    )
    media = s.receive(json.dumps(MEDIA))
    assert media == Media(b"\xff" * 160)
    assert np.array_equal(ulaw_decode(media.audio), np.zeros(160, dtype=np.int16))  # type: ignore[union-attr]
    assert s.receive(json.dumps(DTMF)) == Dtmf("1")
    assert s.receive(json.dumps(MARK)) == Played("gen1-s2")
    assert s.receive(json.dumps(STOP)) == Stop("CA00000000000000000000000000000002")
    assert s.stopped


def test_outbound_messages_have_twilios_shapes() -> None:
    s = started()
    tone = (np.sin(np.arange(160) / 3) * 8000).astype(np.int16)
    out = json.loads(s.media(ulaw_encode(tone)))
    assert set(out) == {"event", "streamSid", "media"} and out["event"] == "media"
    assert out["streamSid"] == SID and set(out["media"]) == {"payload"}
    assert base64.b64decode(out["media"]["payload"]) == ulaw_encode(tone)
    assert json.loads(s.mark("gen1-s2")) == {
        "event": "mark", "streamSid": SID, "mark": {"name": "gen1-s2"}}  # fmt: skip
    assert json.loads(s.clear()) == {"event": "clear", "streamSid": SID}
    with pytest.raises(RuntimeError, match="before its start"):
        TwilioStream().clear()


@pytest.mark.parametrize(
    ("message", "fatal", "says"),
    [
        ("not json", False, "not JSON"),
        (json.dumps({"no": "event"}), False, "without an 'event'"),
        (json.dumps({"event": "telepathy", "streamSid": SID}), False, "unknown event 'telepathy'"),
        (json.dumps(MEDIA | {"streamSid": "MZ-other"}), False, "another stream"),
        (json.dumps(MEDIA | {"media": {"payload": "%%% not base64 %%%"}}), False, "not base64"),
        (json.dumps(MEDIA | {"media": {"payload": "A" * 20000}}), False, "oversized"),
        (json.dumps(MEDIA | {"media": {}}), False, "without a payload"),
        (json.dumps(DTMF | {"dtmf": {"digit": "x"}}), False, "valid digit"),
        (json.dumps(MARK | {"mark": {}}), False, "mark without a name"),
        (json.dumps(START), True, "second 'start'"),
    ],
)
def test_bad_input_is_skipped_or_fatal_with_a_clear_reason(
    message: str, fatal: bool, says: str
) -> None:
    s = started()
    with pytest.raises(TelephonyInputError, match=says) as err:
        s.receive(message)
    assert err.value.fatal is fatal
    # a skipped message changes nothing: the stream goes on
    assert s.receive(json.dumps(MEDIA)) == Media(b"\xff" * 160)


def test_media_before_start_is_skipped_and_a_bad_start_is_fatal() -> None:
    s = TwilioStream()
    with pytest.raises(TelephonyInputError, match="'media' before 'start'") as err:
        s.receive(json.dumps(MEDIA))
    assert not err.value.fatal
    bad = json.loads(json.dumps(START))
    bad["start"]["mediaFormat"] = {"encoding": "audio/x-l16", "sampleRate": 16000}
    with pytest.raises(TelephonyInputError, match="unsupported media format") as err:
        s.receive(json.dumps(bad))
    assert err.value.fatal
    with pytest.raises(TelephonyInputError, match="mediaFormat") as err:
        s.receive(json.dumps({"event": "start", "start": {"streamSid": SID}}))
    assert err.value.fatal


# -- the voice webhook ----------------------------------------------------------------------

DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"


@pytest.mark.parametrize(
    ("caller", "signature"),
    [
        # twilio-node's own test fixture, and the example in Twilio's webhook-security docs
        ("+14158675309", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        ("+14158675310", "GvWf1cFY/Q7PnoempGyD5oXAezc="),
    ],
)
def test_request_signatures_match_twilios_published_vectors(caller: str, signature: str) -> None:
    from voice_agent.transports.telephony.twilio import request_signature, signature_valid

    params = {"CallSid": "CA1234567890ABCDE", "Caller": caller, "Digits": "1234",
              "From": caller, "To": "+18005551212"}  # fmt: skip
    assert request_signature("12345", DOC_URL, params) == signature
    assert signature_valid("12345", DOC_URL, params, signature)
    # unsigned, mis-signed, another token, a changed parameter or URL: refused
    assert not signature_valid("12345", DOC_URL, params, None)
    assert not signature_valid("12345", DOC_URL, params, signature[:-2] + "A=")
    assert not signature_valid("54321", DOC_URL, params, signature)
    assert not signature_valid("12345", DOC_URL, params | {"Digits": "9999"}, signature)
    assert not signature_valid("12345", DOC_URL + "&baz=3", params, signature)


def test_the_twiml_connects_a_bidirectional_stream_then_hangs_up() -> None:
    import xml.etree.ElementTree as ET

    from voice_agent.transports.telephony.twilio import connect_stream_twiml

    xml = connect_stream_twiml(
        "wss://agent.example.com/v1/telephony/twilio/stream", {"token": 'a&b"<c>'}
    )
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(xml)
    assert root.tag == "Response" and [c.tag for c in root] == ["Connect", "Hangup"]
    (stream,) = list(root[0])
    assert stream.tag == "Stream"
    assert stream.get("url") == "wss://agent.example.com/v1/telephony/twilio/stream"
    (param,) = list(stream)
    assert (param.tag, param.get("name"), param.get("value")) == ("Parameter", "token", 'a&b"<c>')


def test_stream_urls_swap_only_the_scheme() -> None:
    from voice_agent.transports.telephony.routes import stream_url

    assert stream_url("https://ws.example.com") == "wss://ws.example.com/v1/telephony/twilio/stream"
    assert stream_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/v1/telephony/twilio/stream"


def test_one_time_tokens_are_good_once_expire_and_are_bounded() -> None:
    from doubles import AutoAdvanceClockDouble

    from voice_agent.transports.telephony.routes import OneTimeTokens

    clock = AutoAdvanceClockDouble()
    tokens = OneTimeTokens(clock, ttl_s=60, limit=3)
    a = tokens.issue()
    assert tokens.take(a) and not tokens.take(a)  # once
    b = tokens.issue()
    clock.stall(61)
    assert not tokens.take(b)  # expired
    first, *rest = [tokens.issue() for _ in range(4)]
    assert not tokens.take(first)  # the oldest went when a fourth came
    assert all(tokens.take(t) for t in rest)
    assert not tokens.take("made-up")
