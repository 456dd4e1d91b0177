"""The session's live reply: at most one :class:`Reply` (prepared or playing) and its task.

:meth:`Replies.launch` starts it, :meth:`Replies.commit` lets a prepared one play,
:meth:`Replies.cancel` tears it down, and when its task ends (finished or cancelled)
what the caller heard is recorded, its events are sent, and the driver hears of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from voice_agent.audio.playout import Playout
from voice_agent.core.enums import ReplyKind
from voice_agent.session.record import CallRecord
from voice_agent.session.reply import Reply
from voice_agent.session.writer import PlayGate

Emit = Callable[..., Awaitable[None]]


class Replies:
    def __init__(
        self,
        record: CallRecord,
        playout: Playout,
        gate: PlayGate,
        emit: Emit,
        emit_safely: Emit,
        finished: Callable[[int], Awaitable[None]],
    ) -> None:
        self.record, self.playout, self.gate = record, playout, gate
        self.emit, self.emit_safely, self.finished = emit, emit_safely, finished
        self._live: tuple[Reply, asyncio.Task[None]] | None = None

    def live(self, gen: int) -> Reply | None:
        """The live reply if it is generation ``gen``."""
        return self._live[0] if self._live is not None and self._live[0].gen == gen else None

    def launch(self, tg: asyncio.TaskGroup, reply: Reply) -> None:
        """Start ``reply`` (uncommitted: prepared, its audio held until :meth:`commit`)."""
        self.record.track(reply.m)
        if not reply.m.committed:
            self.gate.held = reply.gen
        self._live = (reply, tg.create_task(self._run(reply), name=f"reply-{reply.gen}"))

    async def commit(self, gen: int) -> None:
        """The turn is over: prepared reply ``gen`` plays (its events catch up)."""
        reply = self.live(gen)
        assert reply is not None, f"no prepared reply {gen}"
        self.gate.held = None
        reply.commit()
        await self.emit("transcript.final", text=reply.m.user_text, gen=gen)
        await self.emit("reply.start", gen=gen, **start_purpose(reply.m.kind))
        if reply.m.parts:
            await self.emit("reply.delta", gen=gen, text="".join(reply.m.parts))

    async def cancel(self, gen: int | None = None) -> None:
        """Cancel the live reply (only if it is ``gen``, when given) and wait until it ends."""
        if self._live is None or (gen is not None and self._live[0].gen != gen):
            return
        _, task = self._live
        self._live = None
        task.cancel()
        await asyncio.wait({task})

    async def _run(self, reply: Reply) -> None:
        gen, m = reply.gen, reply.m
        interrupted = False
        try:
            await reply.run()
        except asyncio.CancelledError:
            interrupted = True
            raise
        finally:
            reply.finished = True
            reply.settle(interrupted)
            self.record.ended(m, reply.history_entry(interrupted), interrupted)
            if m.committed:
                await self.emit_safely("reply.done", gen=gen, status=m.status, text=m.reply_text)
                turn = m.to_dict(self.record.t0) | {"context": None}
                await self.emit_safely("metrics", turn=turn)
            else:  # a prepared reply the caller never heard leaves no trace
                self.playout.clear(gen)
            self.playout.forget(gen)
            self.gate.release(gen)
            if self._live is not None and self._live[0] is reply:
                self._live = None
        await self.finished(gen)


def start_purpose(kind: ReplyKind) -> dict[str, ReplyKind]:
    """A turn's ``reply.start`` names its purpose only when it is not an answer (the line
    that asks an unclear turn again)."""
    return {} if kind is ReplyKind.REPLY else {"purpose": kind}
