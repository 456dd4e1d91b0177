"""Tools that ship with the agent and need no network."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from voice_agent.llm.tools import Tool, tool


def time_tool(wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Tool:
    """``current_time``: the date and time now in an IANA timezone (``wall_clock`` is
    injected for tests; it must return an aware datetime)."""

    @tool(status="Looking up the time…", spoken="Let me check the time.")
    async def current_time(
        timezone: Annotated[str, "IANA timezone name, such as Asia/Tokyo or Europe/Paris"] = "UTC",
    ) -> str:
        """The current date and time in a timezone. Use it for any question about the
        time or the date somewhere."""
        try:
            zone = ZoneInfo(timezone.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown timezone {timezone!r}: use an IANA name such as Asia/Tokyo"
            ) from None
        now = wall_clock().astimezone(zone)
        offset = now.strftime("%z")
        return json.dumps(
            {
                "timezone": zone.key,
                "date": f"{now:%A}, {now:%B} {now.day}, {now.year}",
                "time_24h": f"{now:%H:%M}",
                "time_12h": f"{now.hour % 12 or 12}:{now:%M} {'AM' if now.hour < 12 else 'PM'}",
                "utc_offset": f"{offset[:3]}:{offset[3:]}",
            }
        )

    return current_time
