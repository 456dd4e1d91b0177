"""Ids that name things a client can reach (sessions, conversations, responses)."""

from __future__ import annotations

import secrets


def new_id() -> str:
    """An unguessable id: 128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)
