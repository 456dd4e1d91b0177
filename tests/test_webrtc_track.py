"""The paced outbound WebRTC track on a fake clock: exact times, no drift, no bursts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from doubles import AutoAdvanceClockDouble

from voice_agent.transports.webrtc import RTC_FRAME, PacedAudioTrack, WebRtcOutput


def tone_frame(value: int) -> np.ndarray:
    return np.full(RTC_FRAME, value, dtype=np.int16)


async def test_ten_minutes_of_frames_keep_exact_pace_and_pts() -> None:
    clock = AutoAdvanceClockDouble(start=1000.0)
    track = PacedAudioTrack(clock)
    n = 10 * 60 * 50  # 10 minutes of 20 ms frames
    times = np.empty(n)
    pts = np.empty(n, dtype=np.int64)
    for k in range(n):
        frame = await track.recv()
        times[k] = clock.now()
        pts[k] = frame.pts
        assert k or (frame.sample_rate, frame.samples, frame.format.name) == (48000, 960, "s16")
    # frame k leaves at t0 + k * 20 ms: computed from the sample count, so no drift builds up
    expected = 1000.0 + np.arange(n) * 0.02
    assert np.max(np.abs(times - expected)) < 1e-6
    assert times[-1] - times[0] == pytest.approx((n - 1) * 0.02, abs=1e-6)
    assert np.array_equal(pts, np.arange(n) * 960)
    assert track.resyncs == 0


async def test_silence_when_idle_then_queued_audio_in_order() -> None:
    track = PacedAudioTrack(AutoAdvanceClockDouble())
    idle = await track.recv()
    assert not idle.to_ndarray().any()
    track.push(1, tone_frame(100))
    track.push(1, tone_frame(200))
    values = [int((await track.recv()).to_ndarray()[0, 0]) for _ in range(3)]
    assert values == [100, 200, 0]
    assert track.sent == {1: 1920}


async def test_a_cleared_generation_stops_at_the_next_frame() -> None:
    track = PacedAudioTrack(AutoAdvanceClockDouble())
    for _ in range(10):
        track.push(3, tone_frame(300))
    await track.recv()
    assert track.clear(3) == 9
    track.push(3, tone_frame(300))  # a late frame of the cleared generation is refused
    track.push(4, tone_frame(400))
    assert int((await track.recv()).to_ndarray()[0, 0]) == 400
    assert track.sent == {3: 960, 4: 960}


async def test_a_stalled_reader_resyncs_instead_of_bursting() -> None:
    clock = AutoAdvanceClockDouble(start=0.0)
    track = PacedAudioTrack(clock, resync_s=0.2)
    for _ in range(5):
        await track.recv()
    clock.stall(1.0)  # the encoder was busy for a second
    t_before = clock.now()
    await track.recv()
    times = []
    for _ in range(5):
        await track.recv()
        times.append(clock.now())
    assert track.resyncs == 1
    # after the stall, frames are again 20 ms apart: no catch-up burst
    assert np.allclose(np.diff([t_before, *times]), 0.02)


async def test_queue_is_bounded() -> None:
    track = PacedAudioTrack(AutoAdvanceClockDouble(), max_frames=4)
    for i in range(6):
        track.push(1, tone_frame(i))
    assert (track.queued_frames, track.dropped) == (4, 2)
    assert int((await track.recv()).to_ndarray()[0, 0]) == 2


async def test_output_resamples_16k_frames_into_48k_track_frames_and_clears() -> None:
    track = PacedAudioTrack(AutoAdvanceClockDouble())
    out = WebRtcOutput(track)
    t = np.arange(320 * 50) / 16000
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    for i in range(50):  # one second of 20 ms session frames
        await out.send_audio(7, pcm[i * 320 : (i + 1) * 320])
    assert 47 <= track.queued_frames <= 50  # the resampler holds back a few ms
    await out.clear(7)
    assert track.queued_frames == 0
    # an event named "clear" is only passed on: the transport acts on calls, not names
    await out.send_audio(8, pcm[:320])
    await out.send_audio(8, pcm[320:640])
    queued = track.queued_frames
    await out.send_event({"type": "clear", "gen": 8})
    assert track.queued_frames == queued > 0
    assert out._pending and '"clear"' in out._pending[-1]  # waits for the data channel


async def test_output_reports_the_sent_position_every_200_ms() -> None:
    track = PacedAudioTrack(AutoAdvanceClockDouble())
    out = WebRtcOutput(track)
    for n in range(960, 48000 + 1, 960):  # one second of gen 3, then gen 4 starts
        out.sent(3, n)
    out.sent(4, 960)
    out.sent(4, 9600)
    sent = [json.loads(m) for m in out._pending]
    assert [(e["gen"], e["samples"]) for e in sent] == [
        (3, 9600), (3, 19200), (3, 28800), (3, 38400), (3, 48000), (4, 9600)
    ]  # fmt: skip
    assert {e["type"] for e in sent} == {"playout"} and {e["sample_rate"] for e in sent} == {48000}


async def test_a_paused_generation_waits_in_the_track_and_resumes_in_order() -> None:
    track = PacedAudioTrack(AutoAdvanceClockDouble())
    out = WebRtcOutput(track)
    for v in (1, 2, 3):
        track.push(5, tone_frame(v))
    first = await track.recv()
    await out.pause(5)
    held = [await track.recv() for _ in range(3)]
    await out.resume(4)  # another generation's resume releases nothing
    assert track.held == 5
    await out.resume(5)
    after = [await track.recv() for _ in range(3)]
    values = [int(f.to_ndarray()[0, 0]) for f in [first, *held, *after]]
    assert values == [1, 0, 0, 0, 2, 3, 0]  # silence while held, then the rest, nothing lost
    assert track.sent[5] == 3 * RTC_FRAME


class ChannelDouble:
    """A data channel whose peer stopped reading: what it is sent stays buffered."""

    readyState = "open"

    def __init__(self) -> None:
        self.bufferedAmount = 0
        self.sent: list[str] = []

    def send(self, text: str) -> None:
        self.sent.append(text)
        self.bufferedAmount += len(text)


async def test_a_data_channel_that_does_not_drain_ends_the_session_as_a_slow_client() -> None:
    from voice_agent.session.output import SlowClient

    out = WebRtcOutput(PacedAudioTrack(AutoAdvanceClockDouble()), max_buffered=1000)
    channel = ChannelDouble()
    out.attach(channel)
    event = {"type": "reply.delta", "gen": 1, "text": "x" * 75}
    sent = 0
    with pytest.raises(SlowClient, match="1000 bytes"):
        while True:
            await out.send_event(event)
            sent += 1
    # it took events until more than 1000 bytes were buffered (120 bytes each: 9), then no more
    assert len(json.dumps(event)) == 120
    assert len(channel.sent) == sent == 9 and channel.bufferedAmount == 1080
    out.sent(1, 48000)  # a playout position is dropped, not raised (it comes from the track)
    assert len(channel.sent) == 9 and out.dropped_events == 2
