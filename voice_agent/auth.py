"""Who may call: API keys, short-lived signed tokens for the browser page, and the
Origin and content-type checks against cross-site requests.

With ``--api-key`` set (or ``VOICE_AGENT_API_KEYS``), every endpoint but ``/healthz``,
``/readyz`` (which then tells only ready or not), the page and its static files asks
for a credential: ``Authorization: Bearer <key or token>``, or ``?token=<token>`` where
a browser cannot set a header (the WebSocket, an EventSource). ``POST /v1/tokens`` with
a key mints a token (a JWT, HS256, signed with a secret derived from the keys, so every
process with the same keys takes every process's tokens). Telephony streams may carry
a key in ``?token=`` (a provider is given a fixed URL); Twilio's own signature checks
stay as they are. A refusal is a 401 (HTTP) or close 4401 (WebSocket), before any model
work. Pure ASGI middleware: the app behind it never sees a refused request.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import jwt

from voice_agent.core.ids import new_id

ANONYMOUS = "anonymous"
"""The principal of every request when no key is set."""
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
OPEN_PATHS = ("/healthz", "/readyz", "/", "/favicon.ico")
JSON_POSTS = ("/v1/chat", "/v1/voice/webrtc/offer")
"""POSTs whose body is JSON: another content type is refused (a cross-site form or
``text/plain`` request cannot be one)."""


class KeyHolds:
    """What each API key holds at once (its calls, or its text responses), under a limit.

    :meth:`take` counts one more for a principal, or refuses it at the limit; every
    take that succeeded ends with one :meth:`release`. Taking is synchronous, so the
    limit holds however many requests start at the same moment.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def take(self, principal: str, limit: int | None) -> bool:
        if limit is not None and self.counts[principal] >= limit:
            return False
        self.counts[principal] += 1
        return True

    def release(self, principal: str) -> None:
        self.counts[principal] -= 1
        if self.counts[principal] <= 0:
            del self.counts[principal]


class Auth:
    def __init__(
        self,
        keys: list[str],
        token_ttl_s: float = 600.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.keys = frozenset(k for k in keys if k)
        self.token_ttl_s = token_ttl_s
        self.wall = wall
        material = "\0".join(sorted(self.keys)).encode()
        self._secret = hashlib.sha256(b"voice-agent token v1\0" + material).digest()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def mint(self, key: str | None = None) -> dict[str, Any]:
        """A token; ``key``: the API key that asked for it, whose limits it shares."""
        now = self.wall()
        claims: dict[str, Any] = {
            "iat": int(now), "exp": int(now + self.token_ttl_s), "jti": new_id(),
        }  # fmt: skip
        if key is not None:
            claims["kid"] = key_id(key)
        token = jwt.encode(claims, self._secret, algorithm="HS256")
        return {"token": token, "expires_in": int(self.token_ttl_s), "token_type": "Bearer"}

    def is_key(self, credential: str) -> bool:
        return credential in self.keys

    def is_token(self, credential: str) -> bool:
        return self.token_key(credential) is not None

    def token_key(self, credential: str) -> str | None:
        """The key id a good token carries ("token" if none), or None."""
        claims = self.token_claims(credential)
        return None if claims is None else claims[0]

    def token_claims(self, credential: str) -> tuple[str, str] | None:
        """A good token's (key id, or "token" if none; the token's own id), or None."""
        try:  # the expiry is checked on the injected clock, not PyJWT's own
            claims = jwt.decode(
                credential, self._secret, algorithms=["HS256"],
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                         "require": ["exp", "iat", "jti"]},
            )  # fmt: skip
        except jwt.InvalidTokenError:
            return None
        if int(claims["exp"]) <= self.wall():
            return None
        return str(claims.get("kid") or "token"), str(claims["jti"])


class Guard:
    """ASGI middleware: authentication (when keys are set), the Origin list, and the
    content type of JSON POSTs."""

    def __init__(
        self,
        app: Any,
        auth: Auth,
        allowed_origins: list[str],
        key_in_query: Callable[[str], bool] = lambda path: path.startswith("/v1/telephony/"),
        exempt: Callable[[str], bool] = lambda path: False,
        on_refused: Callable[[str], None] = lambda why: None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.origins = {o.rstrip("/") for o in allowed_origins}
        self.key_in_query = key_in_query
        self.exempt = exempt
        self.on_refused = on_refused

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if self.origins and origin is not None and origin.rstrip("/") not in self.origins:
            if kind == "websocket" or scope["method"] not in ("GET", "HEAD", "OPTIONS"):
                self.on_refused("origin")
                await _refuse(kind, send, receive, 403, CLOSE_FORBIDDEN_ORIGIN,
                              "this origin is not allowed")  # fmt: skip
                return
        if kind == "http" and scope["method"] == "POST" and path in JSON_POSTS:
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                await _refuse(kind, send, receive, 415, 0,
                              "send the body as Content-Type: application/json")  # fmt: skip
                return
        principal, credential, token_id = self._principal(
            path, headers, scope.get("query_string", b"")
        )
        authenticated = principal is not None
        scope.setdefault("state", {})["authenticated"] = authenticated
        scope["state"]["principal"] = principal
        scope["state"]["credential"] = credential
        scope["state"]["token_id"] = token_id
        open_path = path in OPEN_PATHS or path.startswith("/static/") or self.exempt(path)
        if self.auth.enabled and not authenticated and not open_path:
            self.on_refused("auth")
            why = "authentication required: an API key or a token from /v1/tokens"
            await _refuse(kind, send, receive, 401, CLOSE_UNAUTHORIZED, why)
            return
        await self.app(scope, receive, send)

    def _principal(
        self, path: str, headers: dict[str, str], query: bytes
    ) -> tuple[str | None, str | None, str | None]:
        """Who is asking ("anonymous" with authentication off; None: nobody allowed), with
        what ("key", "token", or None), and the token's id if it was a token."""
        if not self.auth.enabled:
            return ANONYMOUS, None, None
        bearer = headers.get("authorization", "")
        if bearer[:7].lower() == "bearer ":
            credential = bearer[7:].strip()
            if self.auth.is_key(credential):
                return key_id(credential), "key", None
            claims = self.auth.token_claims(credential)
            if claims is not None:
                return claims[0], "token", claims[1]
        token = parse_qs(query.decode("latin-1")).get("token", [""])[0]
        if token:
            if self.key_in_query(path) and self.auth.is_key(token):
                return key_id(token), "key", None
            claims = self.auth.token_claims(token)
            if claims is not None:
                return claims[0], "token", claims[1]
        return None, None, None


@dataclass(frozen=True)
class Caller:
    """Who made a request, as far as records go. What they start (a call, a
    conversation) is owned by them; a key reads what it and its tokens own, a token
    only what it owns itself. With authentication off, everyone is ``anonymous`` and
    reads everything (a record's 128-bit id is then what guards it)."""

    principal: str = ANONYMOUS
    token: str | None = None
    """The token's id, when the request came with a token (the browser page)."""

    @classmethod
    def of(cls, scope: Any) -> Caller:
        state = scope.get("state", {})
        token = state.get("token_id") if state.get("credential") == "token" else None
        return cls(str(state.get("principal") or ANONYMOUS), token)

    @property
    def owner(self) -> str:
        """What a record this caller starts says of its owner (never a key itself)."""
        return self.principal if self.token is None else f"{self.principal}/{self.token}"

    def may_read(self, owner: str | None) -> bool:
        """May this caller read (or go on with) a record of ``owner`` (None: a record
        from before owners were kept, or with no owner: only with authentication off)."""
        if self.principal == ANONYMOUS:
            return True
        if owner is None:
            return False
        principal, _, token = owner.partition("/")
        return principal == self.principal and self.token in (None, token)


OPEN = Caller()
"""The caller when authentication is off (and in code with no request)."""


def request_key(scope: Any, auth: Auth) -> str | None:
    """The API key a request carries itself (not a token): only a key mints tokens."""
    for k, v in scope["headers"]:
        if k.lower() == b"authorization":
            value = v.decode("latin-1")
            key = value[7:].strip()
            return key if value[:7].lower() == "bearer " and auth.is_key(key) else None
    return None


def key_id(key: str) -> str:
    """A key's public name (its limits and metrics are per key): never the key itself."""
    return "key-" + hashlib.sha256(b"voice-agent key id\0" + key.encode()).hexdigest()[:12]


async def _refuse(kind: str, send: Any, receive: Any, status: int, code: int, why: str) -> None:
    if kind == "websocket":
        message = await receive()  # the handshake
        if message["type"] != "websocket.connect":
            return
        # accepted, then closed: a browser sees the code and the reason (a refused
        # handshake shows it only "1006")
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code, "reason": why})
        return
    body = json.dumps({"error": why}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
