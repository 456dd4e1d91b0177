"""Tools that ship with the agent and need no network."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from voice_agent.llm.tools import Tool, tool

TIME_TOOL = "current_time"
TIME_INTENT = (
    r"\bwhat(?:'s| is)? the (?:time|date)\b|\bwhat time is it\b|\bthe time (?:in|at|over)\b|"
    r"\bwhat (?:day|date) is (?:it|today)\b|\btime is it (?:in|at|over)\b|\btoday's date\b"
)
"""Words that plainly ask the time or the date (a voice turn asks with the tool in mind)."""


def time_tool(wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Tool:
    """``current_time``: the date and time now in an IANA timezone (``wall_clock`` is
    injected for tests; it must return an aware datetime)."""

    @tool(
        status="Looking up the time…", spoken="Let me check the time.", checks_live=False,
        intent=TIME_INTENT,
    )  # fmt: skip
    async def current_time(
        timezone: Annotated[str, "IANA timezone name, such as Asia/Tokyo or Europe/Paris"] = "",
    ) -> str:
        """The current date and time in a timezone. Use it for any question about the
        time or the date somewhere."""
        name = timezone.strip()
        if not name or name.lower() == "local":
            now = wall_clock().astimezone()  # the server's own zone
            zone_name = now.tzname() or "local"
        else:
            try:
                zone = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"unknown timezone {timezone!r}: use an IANA name such as Asia/Tokyo"
                ) from None
            now = wall_clock().astimezone(zone)
            zone_name = zone.key
        offset = now.strftime("%z")
        return json.dumps(
            {
                "timezone": zone_name,
                "date": f"{now:%A}, {now:%B} {now.day}, {now.year}",
                "time_24h": f"{now:%H:%M}",
                "time_12h": f"{now.hour % 12 or 12}:{now:%M} {'AM' if now.hour < 12 else 'PM'}",
                "utc_offset": f"{offset[:3]}:{offset[3:]}",
            }
        )

    return current_time
