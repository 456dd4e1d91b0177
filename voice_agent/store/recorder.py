"""A voice session's record in the conversation store: its conversation, each message
the call keeps (as the call goes), and its final report.

The session never waits on the database: :meth:`SessionRecorder.message` and
:meth:`SessionRecorder.end` only queue (bounded; a full queue drops the message with a
warning in the log), and :meth:`SessionRecorder.run` writes them in order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from voice_agent.store import ConversationStore, StoreError

log = logging.getLogger("voice_agent.store")


class SessionRecorder:
    def __init__(
        self,
        store: ConversationStore,
        session_id: str,
        conversation_id: str,
        transport: str,
        new_conversation: bool,
        max_queue: int = 256,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.session_id = session_id
        self.conversation_id = conversation_id
        self.transport = transport
        self.new_conversation = new_conversation
        self.owner = owner
        """Who started the call (a new conversation is theirs)."""
        self._q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(max_queue)
        self.dropped = 0

    def message(self, role: str, content: str, flags: dict[str, Any]) -> None:
        self._put(("message", (role, content, flags)))

    def end(self, report: dict[str, Any]) -> None:
        """The call is over: its report is the last thing written."""
        try:
            self._q.put_nowait(("end", report))
        except asyncio.QueueFull:  # the report matters more than a queued message
            self._q.get_nowait()
            self._q.put_nowait(("end", report))
            self.dropped += 1

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self._q.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("session %s: the store is behind; a message was not stored",
                        self.session_id)  # fmt: skip

    async def run(self) -> None:
        """Write until the call's report is written (a failing write is logged, and the
        next is tried)."""
        try:
            if self.new_conversation:
                await self.store.create_conversation(self.conversation_id, self.owner)
            await self.store.put_session(self.session_id, self.conversation_id, self.transport)
        except StoreError as exc:
            log.error("session %s: not recorded in the store: %s", self.session_id, exc)
        while True:
            kind, item = await self._q.get()
            try:
                if kind == "end":
                    await self.store.end_session(self.session_id, item)
                    return
                role, content, flags = item
                await self.store.add_message(
                    self.conversation_id, role, content, source="voice",
                    session_id=self.session_id, interrupted=bool(flags.get("interrupted")),
                    incomplete=bool(flags.get("incomplete")), timings=flags.get("timings"),
                )  # fmt: skip
            except StoreError as exc:
                log.error("session %s: a write to the store failed: %s", self.session_id, exc)
