"""Which of a llama-server's slots each caller's requests go to. Pure.

A llama-server slot keeps the tokens of its last request (its KV cache), and a request
reads only what its prompt does not share with that cache. With several slots and no
choice of ours, the server puts a request in any idle slot, so a call's next reply
often lands in a slot that holds another call's words: it reads its date line, its
history and the caller's words again, and a prefill of the caller's words so far is
read into a slot the reply never uses. Measured with 4 callers at once (fast profile,
2 cores): replies read 48-50 prompt tokens where 5-15 were new, at 15-22 ms a token.

:class:`SlotMap` gives each owner (a call) a home slot and sends its requests there while
that slot is free. It never makes a request wait for a busy slot: a request whose home
is busy moves to the idle slot used longest ago (it becomes that owner's home), and
when every slot is busy the request goes without a slot and the server places it.
"""

from __future__ import annotations

from collections.abc import Hashable


class SlotMap:
    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a slot map needs at least one slot")
        self.slots = slots
        self._home: dict[Hashable, int] = {}
        """Each owner's slot (the owners a slot was last given to; older ones dropped)."""
        self._owner: dict[int, Hashable] = {}
        """The owner each slot was last given to."""
        self._busy: set[int] = set()
        self._used: dict[int, int] = {s: 0 for s in range(slots)}
        """When each slot was last taken (a count), for least-recently-used choice."""
        self._count = 0
        self.moves = 0
        """Requests that went to another slot because their home was busy or taken."""

    def acquire(self, owner: Hashable) -> int | None:
        """A free slot for ``owner``'s request (its home when free), marked busy; None when
        every slot is busy. Pair with :meth:`release`."""
        home = self._home.get(owner)
        if home is not None and self._owner.get(home) == owner and home not in self._busy:
            slot = home
        else:
            idle = [s for s in range(self.slots) if s not in self._busy]
            if not idle:
                return None
            slot = min(idle, key=lambda s: self._used[s])
            if home is not None:
                self.moves += 1
            previous = self._owner.get(slot)
            if previous is not None and previous != owner:
                self._home.pop(previous, None)
            self._home[owner] = slot
            self._owner[slot] = owner
        self._count += 1
        self._used[slot] = self._count
        self._busy.add(slot)
        return slot

    def release(self, slot: int) -> None:
        self._busy.discard(slot)

    def home(self, owner: Hashable) -> int | None:
        """``owner``'s slot, if it still has one."""
        return self._home.get(owner)

    @property
    def busy(self) -> int:
        return len(self._busy)
