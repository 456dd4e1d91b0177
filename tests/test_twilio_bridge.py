"""The Twilio bridge end to end on virtual time: a Twilio phone double streams the caller
as 8 kHz μ-law, plays the agent's media in real time, echoes marks once their audio has
played (and every pending mark on a clear, as Twilio does), with model doubles behind."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from typing import Any

import numpy as np
from doubles import HANG, ScriptedLLMDouble, double_engine, run_virtual

from voice_agent.audio.g711 import ulaw_decode, ulaw_encode
from voice_agent.core.clock import LoopClock
from voice_agent.session.driver import Session, SessionConfig
from voice_agent.session.turns import DuplexPolicy
from voice_agent.transports.telephony.bridge import run_media_stream
from voice_agent.transports.telephony.twilio import TwilioStream

SID = "MZ00000000000000000000000000000001"
WORDS = {500: "What time is it?", 600: "Stop, tell me a joke instead."}
START = {
    "event": "start", "sequenceNumber": "1", "streamSid": SID,
    "start": {"streamSid": SID, "callSid": "CA1", "accountSid": "AC1", "tracks": ["inbound"],
              "customParameters": {}, "mediaFormat": {"encoding": "audio/x-mulaw",
                                                      "sampleRate": 8000, "channels": 1}},
}  # fmt: skip


def tone8k(seconds: float, level: int) -> np.ndarray:
    return np.full(int(seconds * 8000), level, dtype=np.int16)


def quiet8k(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 8000), dtype=np.int16)


class TwilioPhoneDouble:
    def __init__(self, mic: np.ndarray, extra: list[tuple[float, dict[str, Any]]] | None = None):
        self.mic = mic
        self.extra = sorted(extra or [], key=lambda e: e[0])
        self.inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.buffer: deque[tuple[str, Any]] = deque()
        self.got: list[tuple[float, dict[str, Any]]] = []
        self.heard: list[tuple[float, np.ndarray]] = []
        self.t0 = 0.0

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    async def receive(self) -> str | None:  # the bridge reads Twilio's messages here
        return await self.inbox.get()

    async def send(self, text: str) -> None:  # the bridge writes to Twilio here
        msg = json.loads(text)
        assert msg["streamSid"] == SID
        self.got.append((self.now(), msg))
        if msg["event"] == "media":
            self.buffer.append(("audio", ulaw_decode(base64.b64decode(msg["media"]["payload"]))))
        elif msg["event"] == "mark":
            self.buffer.append(("mark", msg["mark"]["name"]))
        elif msg["event"] == "clear":  # drop the audio; every pending mark comes back
            for kind, item in self.buffer:
                if kind == "mark":
                    self._echo(item)
            self.buffer.clear()

    def _echo(self, name: str) -> None:
        self.inbox.put_nowait(json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": name}}))

    async def call(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        self.inbox.put_nowait(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        self.inbox.put_nowait(json.dumps(START))
        for k in range(int(seconds * 50)):
            await asyncio.sleep(self.t0 + (k + 1) * 0.02 - loop.time())
            chunk = self.mic[k * 160 : (k + 1) * 160]
            chunk = np.concatenate([chunk, np.zeros(160 - len(chunk), dtype=np.int16)])
            self.inbox.put_nowait(json.dumps({"event": "media", "streamSid": SID, "media": {
                "track": "inbound", "chunk": str(k + 1), "timestamp": str(20 * k),
                "payload": base64.b64encode(ulaw_encode(chunk)).decode()}}))  # fmt: skip
            while self.extra and self.extra[0][0] <= self.now():
                self.inbox.put_nowait(json.dumps(self.extra.pop(0)[1]))
            # the phone plays 20 ms, then echoes the marks whose audio has all played
            if self.buffer and self.buffer[0][0] == "audio":
                self.heard.append((self.now(), self.buffer.popleft()[1]))
            while self.buffer and self.buffer[0][0] == "mark":
                self._echo(self.buffer.popleft()[1])
        self.inbox.put_nowait(json.dumps({"event": "stop", "streamSid": SID, "stop": {"callSid": "CA1"}}))

    def sent(self, event: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.got if m["event"] == event]


async def twilio_call(
    llm: ScriptedLLMDouble, mic: np.ndarray, seconds: float, **kw: Any
) -> tuple[Session, TwilioPhoneDouble]:
    engine = double_engine(llm, WORDS)
    phone = TwilioPhoneDouble(mic, kw.pop("extra", None))
    config = SessionConfig(echo_guard=False, duplex=DuplexPolicy(idle_prompt_s=None))

    def make(output: Any) -> Session:
        return Session(engine, output, LoopClock(), config)

    dialing = asyncio.create_task(phone.call(seconds))
    session = await run_media_stream(TwilioStream(), phone.receive, phone.send, make)
    await dialing
    return session, phone


def test_a_phone_call_is_heard_answered_and_played_with_marks_as_the_playout() -> None:
    llm = ScriptedLLMDouble([["It is ", "noon. ", "Have a ", "nice day."]], 0.05)
    mic = np.concatenate([quiet8k(0.5), tone8k(1.0, 500)])
    session, phone = run_virtual(twilio_call(llm, mic, seconds=5.0))
    (turn,) = session.turns
    assert turn.user_text == "What time is it?" and turn.status == "completed"
    assert turn.reply_text == turn.heard_text == "It is noon. Have a nice day."
    assert {m["event"] for _, m in phone.got} == {"media", "mark"}  # no clear: no barge-in
    # every media message is 20 ms of μ-law; the phone played all of the reply: 15 frames
    # of 20 ms at 16 kHz, 2400 samples at 8 kHz, at the TTS double's level
    media = phone.sent("media")
    assert all(len(base64.b64decode(m["media"]["payload"])) == 160 for _, m in media)
    heard = np.concatenate([pcm for _, pcm in phone.heard])
    assert abs(len(heard) - turn.reply_samples // 2) <= 160
    assert abs(float(np.median(np.abs(heard[heard != 0]))) - 1000) <= 50  # through μ-law
    # marks every 200 ms of audio; each came back once played, and is the playout report
    assert [m["mark"]["name"] for _, m in phone.sent("mark")] == ["1:3200"]
    assert turn.client_played_samples == 3200


def test_a_barge_in_clears_twilio_at_once_and_the_history_keeps_what_the_marks_confirm() -> None:
    story = ["One two three four five six seven eight nine ten. "] * 6
    llm = ScriptedLLMDouble([story, ["Sunny."]], 0.01)
    mic = np.concatenate([quiet8k(0.5), tone8k(1.0, 500), quiet8k(2.5), tone8k(1.2, 600)])
    session, phone = run_virtual(twilio_call(llm, mic, seconds=9.0))
    first, second = session.turns
    assert first.status == "interrupted" and second.user_text == WORDS[600]
    (paused,) = [i for i in first.interruptions]
    onset = paused.onset - session.t0
    clears = [t for t, _ in phone.sent("clear")]
    # Twilio was told to clear as the session paused (the VAD's 60 ms after the onset, plus
    # the 20 ms Twilio takes to deliver the caller's frame), and the phone went silent then
    assert clears and abs(clears[0] - (onset + 0.08)) <= 0.04
    assert max(t for t, _ in phone.heard if t <= clears[0] + 1) <= clears[0] + 0.02
    # what the history keeps is what the echoed marks proved: played, not just sent
    assert first.heard_source == "client"
    assert first.client_played_samples % 3200 == 0 and first.client_played_samples > 0
    heard_16k = 2 * sum(len(p) for t, p in phone.heard if t <= clears[0])
    assert first.client_played_samples <= heard_16k < first.client_played_samples + 3200 + 640
    assert session.history[2]["content"] == first.heard_text


def test_dtmf_reaches_the_agent_and_bad_messages_are_skipped() -> None:
    llm = ScriptedLLMDouble([["You pressed five."]], 0.01)
    extra = [
        (0.3, {"event": "telepathy", "streamSid": SID}),
        (0.4, {"event": "media", "streamSid": "MZ-other", "media": {"payload": ""}}),
        (0.5, {"event": "media", "streamSid": SID, "media": {"payload": "%%%"}}),
        (0.6, {"event": "dtmf", "streamSid": SID, "dtmf": {"track": "inbound_track", "digit": "5"}}),
    ]
    session, _ = run_virtual(twilio_call(llm, quiet8k(3.0), seconds=3.0, extra=extra))
    (turn,) = session.turns
    assert turn.user_text == "5" and turn.reply_text == "You pressed five."
    assert [e for e in session.errors if e.startswith("twilio:")] == [
        "twilio: unknown event 'telepathy' was skipped",
        "twilio: 'media' for another stream was skipped",
        "twilio: a media payload that is not base64 was skipped",
    ]


def test_a_second_start_hangs_up_and_a_stream_that_never_starts_gets_no_session() -> None:
    llm = ScriptedLLMDouble([], 0.01, default=[HANG])
    extra = [(1.0, START)]
    session, _ = run_virtual(twilio_call(llm, quiet8k(3.0), seconds=3.0, extra=extra))
    assert session.errors == ["twilio: a second 'start' on one stream"]

    async def never_starts() -> Any:
        inbox: asyncio.Queue[str | None] = asyncio.Queue()
        inbox.put_nowait(json.dumps({"event": "connected"}))

        async def nothing(_: str) -> None:
            return None

        return await run_media_stream(
            TwilioStream(), inbox.get, nothing, lambda o: None, start_timeout_s=5
        )

    assert run_virtual(never_starts()) is None


def test_the_output_ignores_marks_a_clear_dropped() -> None:
    from voice_agent.transports.telephony.bridge import StreamOutput
    from voice_agent.transports.telephony.media import Played as Mark

    async def main() -> list[Any]:
        stream = TwilioStream()
        stream.receive(json.dumps(START))
        sent: list[str] = []

        async def send(text: str) -> None:
            sent.append(text)

        out = StreamOutput(stream, send, mark_every_ms=20)
        for _ in range(4):  # 80 ms in; the resampler holds 2 ms, so 3 frames went out
            await out.send_audio(1, np.full(320, 1000, dtype=np.int16))
        played = out.played(Mark("1:320"))
        await out.clear(1)
        kinds = [json.loads(m)["event"] for m in sent]
        return [played, out.played(Mark("1:640")), out.played(Mark("1:960")),
                out.played(Mark("someone-else")), kinds]  # fmt: skip

    # the first mark was echoed once played; the other two came back because of the clear.
    # Each mark follows the media it counts: a mark never claims audio not yet sent
    assert run_virtual(main()) == [(1, 320), None, None, None, ["media", "mark"] * 3 + ["clear"]]
