"""The LLM's context, bounded: the system prompt, then as many of the newest messages as
fit a budget of characters. Pure.

The history of a long call (or a chat) grows without end; past the model's context
window every later turn fails. Old turns are dropped, oldest first, and in a block
(down to ``keep`` of the budget) so the kept prefix changes rarely: each change costs
the LLM one full read of the prompt (its prefix cache no longer matches).
"""

from __future__ import annotations

from voice_agent.llm.base import Message


def _size(m: Message) -> int:
    return len(str(m.get("content") or ""))


def fit_context(messages: list[Message], max_chars: int, keep: float = 0.75) -> list[Message]:
    """``messages`` (a system prompt first, if any) within ``max_chars`` of history. The
    newest message always stays, cut to the budget from its end if it alone is over."""
    if not messages:
        return messages
    head = messages[:1] if messages[0].get("role") == "system" else []
    rest = messages[len(head):]
    if sum(_size(m) for m in rest) <= max_chars:
        return messages
    target = int(max_chars * keep)
    kept: list[Message] = []
    total = 0
    for m in reversed(rest):
        if kept and total + _size(m) > target:
            break
        kept.append(m)
        total += _size(m)
    kept.reverse()
    while kept and kept[0].get("role") != "user" and len(kept) > 1:
        kept.pop(0)  # the history starts with a caller's turn, not an orphaned reply
    last = kept[-1]
    if _size(last) > max_chars:
        kept[-1] = {**last, "content": str(last["content"])[-max_chars:]}
    return head + kept
