"""Telnyx, Plivo, Vonage and Asterisk AudioSocket, sans-I/O: the message shapes of each
provider's documentation, written out as data, and what bad input does.

Sources: Telnyx "Stream call media over WebSocket" (developers.telnyx.com), Plivo "Stream
Event Protocol" and "Checkpoint event" (plivo.com/docs), Vonage "WebSockets in the Voice
API" (developer.vonage.com), Asterisk's AudioSocket protocol (res_audiosocket)."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from voice_agent.transports.telephony.audiosocket import (
    MAX_PAYLOAD,
    SLIN_8K,
    AudioSocketStream,
    frame,
)
from voice_agent.transports.telephony.media import (
    Cleared,
    Codec,
    Connected,
    Dtmf,
    Media,
    Played,
    Start,
    Stop,
    StreamProtocol,
    TelephonyInputError,
)
from voice_agent.transports.telephony.plivo import PlivoStream
from voice_agent.transports.telephony.telnyx import TelnyxStream
from voice_agent.transports.telephony.vonage import VonageStream

PAYLOAD = base64.b64encode(b"\xff" * 160).decode()

# -- Telnyx -------------------------------------------------------------------------------

TX_ID = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
TX_START = {
    "event": "start", "sequence_number": "1", "stream_id": TX_ID,
    "start": {"user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
              "call_control_id": "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ",
              "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
              "from": "+13122010094", "to": "+13122123456", "tags": ["TAG1", "TAG2"],
              "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
              "custom_parameters": {"customer_id": "customer_123"},
              "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}},
}  # fmt: skip
TX_MEDIA = {"event": "media", "sequence_number": "4", "stream_id": TX_ID,
            "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": PAYLOAD}}  # fmt: skip


def test_telnyx_messages_parse_and_build_in_telnyx_shapes() -> None:
    s = TelnyxStream()
    assert s.receive(json.dumps({"event": "connected", "version": "1.0.0"})) == Connected("1.0.0")
    start = s.receive(json.dumps(TX_START))
    assert start == Start(TX_ID, TX_START["start"]["call_control_id"], Codec("mulaw", 8000),
                          {"customer_id": "customer_123"}, ("inbound",))  # fmt: skip
    assert s.receive(json.dumps(TX_MEDIA)) == Media(b"\xff" * 160)
    dtmf = {"event": "dtmf", "stream_id": TX_ID, "occurred_at": "2022-03-25T15:56:27.123Z",
            "sequence_number": "5", "dtmf": {"digit": "1"}}  # fmt: skip
    assert s.receive(json.dumps(dtmf)) == Dtmf("1")
    mark = {"event": "mark", "sequence_number": "6", "stream_id": TX_ID, "mark": {"name": "m1"}}
    assert s.receive(json.dumps(mark)) == Played("m1")
    stop = {"event": "stop", "sequence_number": "7", "stream_id": TX_ID,
            "stop": {"user_id": "u", "call_control_id": "v2:abc"}}  # fmt: skip
    assert s.receive(json.dumps(stop)) == Stop("v2:abc") and s.stopped
    # to Telnyx (bidirectional RTP): media, mark and clear, no stream id needed
    assert json.loads(s.media(b"\x01\x02")) == {"event": "media", "media": {"payload": "AQI="}}
    assert json.loads(s.mark("m2")) == {"event": "mark", "mark": {"name": "m2"}}
    assert json.loads(s.clear()) == {"event": "clear"}


def test_telnyx_l16_is_big_endian_at_16_khz_and_other_formats_are_refused() -> None:
    s = TelnyxStream()
    start = json.loads(json.dumps(TX_START))
    start["start"]["media_format"] = {"encoding": "L16", "sample_rate": 16000, "channels": 1}
    assert s.receive(json.dumps(start)).codec == Codec("l16", 16000, big_endian=True)  # type: ignore[union-attr]
    pcm = np.array([1, -2, 300], dtype=np.int16)
    assert s.codec.encode(pcm) == b"\x00\x01\xff\xfe\x01\x2c"
    assert np.array_equal(s.codec.decode(b"\x00\x01\xff\xfe\x01\x2c"), pcm)
    start["start"]["media_format"] = {"encoding": "OPUS", "sample_rate": 16000, "channels": 1}
    with pytest.raises(TelephonyInputError, match="unsupported media format 'OPUS'") as err:
        TelnyxStream().receive(json.dumps(start))
    assert err.value.fatal
    error = {"event": "error", "stream_id": TX_ID,
             "payload": {"code": 100002, "title": "unknown_error", "detail": "x"}}  # fmt: skip
    with pytest.raises(TelephonyInputError, match="Telnyx reported an error: unknown_error") as err:
        s.receive(json.dumps(error))
    assert not err.value.fatal


# -- Plivo --------------------------------------------------------------------------------

PV_ID = "87654321-4321-4321-4321-cba987654321"
PV_START = {
    "event": "start", "sequenceNumber": 1,
    "start": {"callId": "12345678-1234-1234-1234-123456789abc", "streamId": PV_ID,
              "accountId": "MAXXXXXXXXXXXXXXXXXX", "tracks": ["inbound"],
              "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
    "extra_headers": "userId=12345;sessionId=abc-xyz",
}  # fmt: skip


def test_plivo_messages_parse_and_build_in_plivo_shapes() -> None:
    s = PlivoStream()
    start = s.receive(json.dumps(PV_START))
    assert start == Start(PV_ID, "12345678-1234-1234-1234-123456789abc", Codec("mulaw", 8000),
                          {"userId": "12345", "sessionId": "abc-xyz"}, ("inbound",))  # fmt: skip
    media = {"event": "media", "sequenceNumber": 42, "streamId": PV_ID,
             "media": {"track": "inbound", "timestamp": "1705312200000", "chunk": 41,
                       "payload": PAYLOAD}}  # fmt: skip
    assert s.receive(json.dumps(media)) == Media(b"\xff" * 160)
    dtmf = {"event": "dtmf", "sequenceNumber": 43, "streamId": PV_ID,
            "dtmf": {"track": "inbound", "digit": "5", "timestamp": "1705312201000"}}  # fmt: skip
    assert s.receive(json.dumps(dtmf)) == Dtmf("5")
    played = {"event": "playedStream", "streamId": PV_ID, "name": "customer greeting audio"}
    assert s.receive(json.dumps(played)) == Played("customer greeting audio")
    cleared = {"event": "clearedAudio", "sequenceNumber": 44, "streamId": PV_ID}
    assert s.receive(json.dumps(cleared)) == Cleared()
    assert json.loads(s.media(b"\x01\x02")) == {"event": "playAudio", "media": {
        "contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": "AQI="}}  # fmt: skip
    assert json.loads(s.mark("customer greeting audio")) == {
        "event": "checkpoint", "streamId": PV_ID, "name": "customer greeting audio"}  # fmt: skip
    assert json.loads(s.clear()) == {"event": "clearAudio", "streamId": PV_ID}


def test_plivo_l16_answers_in_the_streams_own_format() -> None:
    s = PlivoStream()
    start = json.loads(json.dumps(PV_START))
    start["start"]["mediaFormat"] = {"encoding": "audio/x-l16", "sampleRate": 16000}
    s.receive(json.dumps(start))
    assert s.codec == Codec("l16", 16000)
    assert s.codec.encode(np.array([1, -2], dtype=np.int16)) == b"\x01\x00\xfe\xff"
    out = json.loads(s.media(b"\x01\x00"))["media"]
    assert (out["contentType"], out["sampleRate"]) == ("audio/x-l16", 16000)


# -- Vonage -------------------------------------------------------------------------------


def test_vonage_text_events_binary_audio_and_actions() -> None:
    s = VonageStream()
    connected = {"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
                 "uuid": "63f61863-4a51-4f6b-86e1-46edebcf9356", "caller": "447700900000"}  # fmt: skip
    start = s.receive(json.dumps(connected))
    assert start == Start("63f61863-4a51-4f6b-86e1-46edebcf9356",
                          "63f61863-4a51-4f6b-86e1-46edebcf9356", Codec("l16", 16000),
                          {"uuid": "63f61863-4a51-4f6b-86e1-46edebcf9356",
                           "caller": "447700900000"})  # fmt: skip
    frame_20ms = np.arange(320, dtype=np.int16).tobytes()
    assert s.receive(frame_20ms) == Media(frame_20ms)
    assert np.array_equal(s.codec.decode(frame_20ms), np.arange(320))  # little-endian
    dtmf = {"event": "websocket:dtmf", "digit": "5", "duration": 260}
    assert s.receive(json.dumps(dtmf)) == Dtmf("5")
    notify = {"event": "websocket:notify", "payload": {"name": "3:6400"}}
    assert s.receive(json.dumps(notify)) == Played("3:6400")
    assert s.receive(json.dumps({"event": "websocket:cleared"})) == Cleared()
    assert s.media(frame_20ms) == frame_20ms  # binary, as it came
    assert json.loads(s.mark("3:6400")) == {"action": "notify", "payload": {"name": "3:6400"}}
    assert json.loads(s.clear()) == {"action": "clear"}


@pytest.mark.parametrize(
    ("message", "fatal", "says"),
    [
        (b"\x00" * 320, False, "'audio' before 'start'"),
        (json.dumps({"event": "websocket:connected", "content-type": "audio/pcmu"}), True,
         "unsupported content-type"),
        (json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=44100"}),
         True, "unsupported content-type"),
    ],
)  # fmt: skip
def test_vonage_before_a_valid_connected(message: Any, fatal: bool, says: str) -> None:
    with pytest.raises(TelephonyInputError, match=says) as err:
        VonageStream().receive(message)
    assert err.value.fatal is fatal


# -- bad input, every JSON provider ---------------------------------------------------------------


def _started(stream: StreamProtocol) -> StreamProtocol:
    first = {"telnyx": TX_START, "plivo": PV_START}.get(stream.name)
    stream.receive(json.dumps(first) if first else json.dumps(
        {"event": "websocket:connected", "content-type": "audio/l16;rate=8000"}))  # fmt: skip
    return stream


@pytest.mark.parametrize("make", [TelnyxStream, PlivoStream, VonageStream])
@pytest.mark.parametrize(
    ("message", "says"),
    [
        ("not json", "not JSON"),
        (json.dumps([1, 2]), "without an 'event'"),
        (json.dumps({"event": "telepathy", "stream_id": TX_ID, "streamId": PV_ID}),
         "unknown event 'telepathy'"),
    ],
)  # fmt: skip
def test_garbage_is_skipped_and_the_stream_goes_on(make: Any, message: str, says: str) -> None:
    s = _started(make())
    with pytest.raises(TelephonyInputError, match=says) as err:
        s.receive(message)
    assert not err.value.fatal
    assert s.start is not None and not s.stopped


@pytest.mark.parametrize(
    ("make", "message", "says"),
    [
        (TelnyxStream, TX_MEDIA | {"stream_id": "someone-else"}, "another stream"),
        (TelnyxStream, TX_MEDIA | {"media": {"payload": "%%%"}}, "not base64"),
        (TelnyxStream, TX_MEDIA | {"media": {"payload": "A" * 50000}}, "oversized"),
        (PlivoStream, {"event": "media", "streamId": PV_ID, "media": {}}, "without a payload"),
        (PlivoStream, {"event": "dtmf", "streamId": PV_ID, "dtmf": {"digit": "x"}}, "valid digit"),
        (PlivoStream, {"event": "playedStream", "streamId": PV_ID}, "without a name"),
        (VonageStream, {"event": "websocket:notify", "payload": {}}, "without payload.name"),
    ],
)  # fmt: skip
def test_bad_messages_are_skipped_with_a_clear_reason(make: Any, message: Any, says: str) -> None:
    s = _started(make())
    with pytest.raises(TelephonyInputError, match=says) as err:
        s.receive(json.dumps(message))
    assert not err.value.fatal


def test_a_second_start_is_fatal_everywhere() -> None:
    for stream, start in [(TelnyxStream(), TX_START), (PlivoStream(), PV_START)]:
        stream.receive(json.dumps(start))
        with pytest.raises(TelephonyInputError, match="second 'start'") as err:
            stream.receive(json.dumps(start))
        assert err.value.fatal


def test_odd_16_bit_audio_is_skipped() -> None:
    with pytest.raises(TelephonyInputError, match="odd byte count") as err:
        Codec("l16", 8000).decode(b"\x00\x01\x02")
    assert not err.value.fatal


# -- AudioSocket --------------------------------------------------------------------------

CALL_UUID = bytes.fromhex("4f1c2d3e4f5a6b7c8d9e0fa1b2c3d4e5")


def test_audiosocket_frames() -> None:
    s = AudioSocketStream()
    assert frame(0x01, CALL_UUID) == b"\x01\x00\x10" + CALL_UUID
    start = s.receive(frame(0x01, CALL_UUID))
    assert start == Start("4f1c2d3e-4f5a-6b7c-8d9e-0fa1b2c3d4e5",
                          "4f1c2d3e-4f5a-6b7c-8d9e-0fa1b2c3d4e5", SLIN_8K)  # fmt: skip
    slin = np.arange(160, dtype="<i2").tobytes()
    assert s.receive(frame(0x10, slin)) == Media(slin)
    assert s.receive(frame(0x03, b"7")) == Dtmf("7")
    # to Asterisk: 320-byte slin frames, and a hang-up frame as the call ends
    assert s.media(slin) == b"\x10\x01\x40" + slin and s.goodbye() == b"\x00\x00\x00"
    assert s.clear() is None and not s.marks
    assert s.receive(frame(0x00)) == Stop(start.stream_id) and s.stopped  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("data", "fatal", "says"),
    [
        (frame(0x10, b"\x00" * 320)[:2], True, "inside a frame header"),
        (frame(0x10, b"\x00" * 320)[:100], True, "inside a frame"),
        (b"\x10" + (MAX_PAYLOAD + 1).to_bytes(2, "big"), True, "oversized frame length"),
        (frame(0x01, CALL_UUID), True, "second UUID"),
        (frame(0x42, b"hello"), False, "unknown type 0x42"),
        (frame(0xFF, b"\x04"), False, "Asterisk reported an error"),
        (frame(0x03, b"x"), False, "valid digit"),
    ],
)
def test_audiosocket_bad_frames(data: bytes, fatal: bool, says: str) -> None:
    s = AudioSocketStream()
    s.receive(frame(0x01, CALL_UUID))
    with pytest.raises(TelephonyInputError, match=says) as err:
        s.receive(data)
    assert err.value.fatal is fatal


def test_audiosocket_audio_before_the_uuid_is_skipped() -> None:
    with pytest.raises(TelephonyInputError, match="before 'start'") as err:
        AudioSocketStream().receive(frame(0x10, b"\x00" * 320))
    assert not err.value.fatal
