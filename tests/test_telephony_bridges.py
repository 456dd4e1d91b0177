"""Every telephony bridge end to end on virtual time: the provider side of
``voice_agent.transports.telephony.phone`` calls the bridge over an in-memory line, with
model doubles behind the session. Per protocol: the caller is heard and answered in the
provider's codec and framing, marks (checkpoints, notifies) come back only once played
and become the playout position, a barge-in clears the line, and DTMF is caller input."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from doubles import ScriptedLLMDouble, double_engine, run_virtual, silence, tone

from voice_agent.core.clock import LoopClock
from voice_agent.session.driver import Session, SessionConfig
from voice_agent.session.turns import DuplexPolicy
from voice_agent.transports.telephony.audiosocket import AudioSocketStream
from voice_agent.transports.telephony.bridge import Message, run_media_stream
from voice_agent.transports.telephony.phone import PhoneCall, phone_call, provider_side
from voice_agent.transports.telephony.plivo import PlivoStream
from voice_agent.transports.telephony.telnyx import TelnyxStream
from voice_agent.transports.telephony.twilio import TwilioStream
from voice_agent.transports.telephony.vonage import VonageStream

WORDS = {500: "What time is it?", 600: "Stop, tell me a joke instead."}
STREAMS = {
    "twilio": TwilioStream, "telnyx": TelnyxStream, "plivo": PlivoStream,
    "vonage": VonageStream, "audiosocket": AudioSocketStream,
}  # fmt: skip
LINES = [("twilio", 8000), ("telnyx", 8000), ("telnyx", 16000), ("plivo", 8000),
         ("plivo", 16000), ("vonage", 8000), ("vonage", 16000), ("audiosocket", 8000)]  # fmt: skip


async def call_over(
    protocol: str, rate: int, llm: ScriptedLLMDouble, mic: np.ndarray, **kw: Any
) -> tuple[Session, PhoneCall]:
    engine = double_engine(llm, WORDS)
    config = SessionConfig(echo_guard=False, duplex=DuplexPolicy(idle_prompt_s=None))
    to_agent: asyncio.Queue[Message | None] = asyncio.Queue()
    to_phone: asyncio.Queue[Message | None] = asyncio.Queue()

    async def agent_send(message: Message) -> None:
        to_phone.put_nowait(message)

    async def phone_send(message: Message) -> None:
        to_agent.put_nowait(message)

    async def agent() -> Session:
        session = await run_media_stream(
            STREAMS[protocol](), to_agent.get, agent_send,
            lambda out: Session(engine, out, LoopClock(), config),
        )  # fmt: skip
        to_phone.put_nowait(None)  # the agent's end of the line closes
        return session

    async def phone() -> PhoneCall:
        call = await phone_call(provider_side(protocol, rate), mic, to_phone.get, phone_send, **kw)
        to_agent.put_nowait(None)  # the provider closes the line after its stop
        return call

    session, call = await asyncio.gather(agent(), phone())
    return session, call


@pytest.mark.parametrize(("protocol", "rate"), LINES)
def test_a_call_is_heard_answered_and_played_out(protocol: str, rate: int) -> None:
    llm = ScriptedLLMDouble([["It is ", "noon. ", "Have a ", "nice day."]], 0.05)
    mic = np.concatenate([silence(0.5), tone(1.0, 500)])
    session, call = run_virtual(call_over(protocol, rate, llm, mic, linger_s=2.0))
    (turn,) = session.turns
    assert turn.user_text == "What time is it?" and turn.status == "completed"
    assert turn.reply_text == turn.heard_text == "It is noon. Have a nice day."
    assert call.errors == [] and session.errors == []
    # the phone played the whole reply, at the TTS double's level, through the codec
    heard = call.heard_audio()
    loud = heard[np.abs(heard) > 64]
    assert abs(len(loud) - turn.reply_samples) <= 640
    assert abs(float(np.median(np.abs(loud))) - 1000) <= 60
    (reply,) = call.report()["replies"]
    assert 0 < reply["voice_to_voice_ms"] < 2000 and reply["caller_end_s"] == 1.5
    if protocol == "audiosocket":  # no marks: the playout position is what was sent
        assert call.marks_answered == 0 and turn.client_played_samples == 0
    else:  # a mark every 200 ms of audio, each answered once played
        assert call.marks_answered == turn.reply_samples // 3200
        assert turn.client_played_samples == 3200 * call.marks_answered


@pytest.mark.parametrize(("protocol", "rate"), [("twilio", 8000), ("plivo", 16000),
                                                 ("vonage", 8000), ("audiosocket", 8000)])  # fmt: skip
def test_a_barge_in_clears_the_line_and_the_history_keeps_what_was_heard(
    protocol: str, rate: int
) -> None:
    story = ["One two three four five six seven eight nine ten. "] * 6
    llm = ScriptedLLMDouble([story, ["Sunny."]], 0.01)
    mic = np.concatenate([silence(0.5), tone(1.0, 500), silence(2.5), tone(1.2, 600)])
    session, call = run_virtual(call_over(protocol, rate, llm, mic, linger_s=2.0))
    first, second = session.turns
    assert first.status == "interrupted" and second.user_text == WORDS[600]
    (barge,) = call.report()["barge_ins"]
    assert barge["onset_s"] == 4.0
    # the line went quiet within 120 ms (the VAD's 60 ms, a frame each way, one playing);
    # AudioSocket has no clear, so the one or two frames already on the line still play
    assert barge["stop_ms"] <= (160 if protocol == "audiosocket" else 120)
    # one clear, at the pause (the confirmation finds nothing more to drop)
    assert call.clears == (0 if protocol == "audiosocket" else 1)
    heard_16k = 16000 // rate * sum(int(np.count_nonzero(f)) for f in call.heard[: int(4.0 / 0.02) + 6])
    if protocol == "audiosocket":  # what was sent is what was heard, to the frame
        assert first.heard_source != "client"
    else:  # what the answered marks proved: played, not just sent
        assert first.heard_source == "client" and first.client_played_samples % 3200 == 0
        assert first.client_played_samples <= heard_16k < first.client_played_samples + 3200 + 640
    assert session.history[2]["content"] == first.heard_text


@pytest.mark.parametrize("protocol", list(STREAMS))
def test_dtmf_reaches_the_agent_as_caller_input(protocol: str) -> None:
    llm = ScriptedLLMDouble([["You pressed five."]], 0.01)
    session, call = run_virtual(
        call_over(protocol, 8000, llm, silence(1.0), linger_s=1.5, dtmf={0.4: "5"})
    )
    (turn,) = session.turns
    assert turn.user_text == "5" and turn.reply_text == "You pressed five."
    assert call.errors == [] and session.errors == []


@pytest.mark.parametrize("trailing_s", [1.5, 0.0])
def test_a_provider_that_goes_quiet_without_its_stop_is_hung_up(trailing_s: float) -> None:
    llm = ScriptedLLMDouble([["It is noon."]], 0.01)
    engine = double_engine(llm, WORDS)
    config = SessionConfig(echo_guard=False, duplex=DuplexPolicy(idle_prompt_s=None))
    side = provider_side("twilio")

    async def main() -> tuple[Session, float]:
        inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        for message in side.opening():
            inbox.put_nowait(message)
        # the media stops after the silence that ends the turn, or right after the words
        mic = np.concatenate([silence(0.5), tone(1.0, 500), silence(trailing_s)])
        loop = asyncio.get_running_loop()

        async def stream_then_vanish() -> None:  # then nothing, and never a stop
            for frame in np.split(mic[::2], len(mic) // 320):
                await asyncio.sleep(0.02)
                inbox.put_nowait(side.audio(side.codec.encode(frame)))

        async def ignore(_: Message) -> None:
            return None

        talking = asyncio.create_task(stream_then_vanish())
        session = await run_media_stream(
            TwilioStream(), inbox.get, ignore,
            lambda out: Session(engine, out, LoopClock(), config),
        )  # fmt: skip
        await talking
        return session, loop.time()

    t0 = 1000.0
    session, ended = run_virtual(main(), start=t0)
    (turn,) = session.turns  # the line's silence ended the turn, so it was answered
    assert turn.user_text == "What time is it?" and turn.reply_text == "It is noon."
    assert session.errors == ["twilio: nothing from the provider for 5 s: hung up"]
    last = 1.5 + trailing_s
    assert last + 4.99 <= ended - t0 <= last + 5.5  # hung up 5 s after the last message


def test_a_provider_that_stops_reading_is_hung_up_and_the_call_is_still_reported() -> None:
    """The provider takes the caller's audio but stops taking the agent's: a send that
    blocks for the send timeout ends the call, and the server keeps its report."""
    from types import SimpleNamespace

    from voice_agent.server import ServerConfig
    from voice_agent.transports.telephony.routes import serve_call

    llm = ScriptedLLMDouble([["One two three four five six seven eight nine ten. "] * 8], 0.01)
    reports: dict[str, Any] = {}
    state = SimpleNamespace(
        engine=double_engine(llm, WORDS), sessions={}, reports=reports,
        config=ServerConfig(send_timeout_s=2.0),
        session_config=SessionConfig(echo_guard=False, duplex=DuplexPolicy(idle_prompt_s=None)),
        keep_report=lambda sid, report: reports.__setitem__(sid, report),
    )  # fmt: skip
    state.add_session = lambda sid, session, transport, caller: state.sessions.__setitem__(
        sid, session
    )
    side = provider_side("twilio")

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        for message in side.opening():
            inbox.put_nowait(message)
        stuck_at: list[float] = []

        async def send(message: Message) -> None:  # takes 1 s of audio, then stops reading
            if loop.time() - t0 > 3.0:
                stuck_at.append(loop.time())
                await loop.create_future()

        async def talk() -> None:  # the caller's side keeps streaming (silence after)
            mic = np.concatenate([silence(0.5), tone(1.0, 500), silence(20.0)])
            for frame in np.split(mic[::2], len(mic) // 320):
                await asyncio.sleep(0.02)
                inbox.put_nowait(side.audio(side.codec.encode(frame)))

        t0 = loop.time()
        talking = asyncio.create_task(talk())
        session = await serve_call(state, TwilioStream(), inbox.get, send)
        ended = loop.time()
        talking.cancel()
        assert session is not None and state.sessions == {}
        return stuck_at[0] - t0, ended - t0

    stuck, ended = run_virtual(main())
    assert 3.0 <= stuck <= 3.1 and ended == pytest.approx(stuck + 2.0, abs=0.05)
    (report,) = reports.values()
    assert report["transport"] == "twilio"
    assert report["errors"] == ["twilio: the provider stopped reading the agent's audio; hung up"]
    (turn,) = report["turns"]  # nothing said is lost
    assert turn["user_text"] == "What time is it?" and turn["reply_text"].startswith("One two")
