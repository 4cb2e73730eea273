"""Safe defaults of the studio's server: who may call it, from which page, and with how many bytes.

- Bound to 127.0.0.1 the Host header must name the loopback (a DNS-rebinding page cannot borrow the browser).
- With --auth USER:PASSWORD (HTTP Basic) or --token TOKEN (Bearer header, or ?token= once, kept in a cookie)
  every request must carry it.
- A state-changing request (POST, PUT, PATCH, DELETE) from a browser must come from the studio's own origin:
  its Origin header must name this host, and Sec-Fetch-Site must not say cross-site (OWASP's header checks).
- Request bodies larger than the limit are refused with 413 before they are read.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

__all__ = ["Guard", "SecurityMiddleware"]

_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
COOKIE = "sd_lora_studio_token"


@dataclass(frozen=True)
class Guard:
    loopback_only: bool = True
    user: str | None = None
    password: str | None = None
    token: str | None = None
    max_body: int = 32 << 20


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class SecurityMiddleware:
    def __init__(self, app, guard: Guard):
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        problem = self._check(scope, headers)
        if problem is not None:
            status, message, extra = problem
            return await _reply(scope, send, status, message, path, extra)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.guard.max_body:
            return await _reply(scope, send, 413, f"request body of {int(length):,} bytes is over the studio's limit of "
                                                  f"{self.guard.max_body:,} bytes", path)
        received = 0
        too_big = False

        async def limited_receive():
            nonlocal received, too_big
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.guard.max_body:
                    too_big = True
                    return {"type": "http.disconnect"}
            return message

        set_cookie = None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if self.guard.token and query.get("token", [None])[0] == self.guard.token:
            set_cookie = f"{COOKIE}={self.guard.token}; HttpOnly; SameSite=Strict; Path=/"

        async def send_with_cookie(message):
            if message["type"] == "http.response.start" and set_cookie:
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [(b"set-cookie", set_cookie.encode())]
            await send(message)

        await self.app(scope, limited_receive, send_with_cookie)

    def _check(self, scope, headers: dict[str, str]):
        g = self.guard
        if g.loopback_only and _host_name(headers.get("host", "")) not in _LOOPBACK:
            return 403, ("the studio answers only on 127.0.0.1/localhost; to reach it from another machine use an SSH "
                         "tunnel, or start it with --listen and --auth"), {}
        if (g.user is not None or g.token) and not self._authorised(scope, headers):
            extra = {"www-authenticate": 'Basic realm="sd-lora studio"'} if g.user is not None else {}
            return 401, "authentication required (the studio was started with --auth or --token)", extra
        if scope.get("method", "GET") not in _SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and (origin == "null" or urlsplit(origin).netloc != headers.get("host", "")):
                return 403, f"cross-site request refused (Origin {origin} is not this studio)", {}
            if headers.get("sec-fetch-site") == "cross-site":
                return 403, "cross-site request refused (Sec-Fetch-Site: cross-site)", {}
        return None

    def _authorised(self, scope, headers: dict[str, str]) -> bool:
        g = self.guard
        auth = headers.get("authorization", "")
        kind, _, value = auth.partition(" ")
        if g.user is not None and kind.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return secrets.compare_digest(user.encode(), g.user.encode()) and \
                secrets.compare_digest(password.encode(), (g.password or "").encode())
        if g.token:
            if kind.lower() == "bearer" and secrets.compare_digest(value.strip().encode(), g.token.encode()):
                return True
            cookies = headers.get("cookie", "")
            for part in cookies.split(";"):
                name, _, val = part.strip().partition("=")
                if name == COOKIE and secrets.compare_digest(val.encode(), g.token.encode()):
                    return True
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = query.get("token", [""])[0]
            if given and secrets.compare_digest(given.encode(), g.token.encode()):
                return True
        return False


async def _reply(scope, send, status: int, message: str, path: str, extra: dict | None = None) -> None:
    wants_json = path.startswith(("/api/", "/sdapi/"))
    if wants_json:
        body = json.dumps({"error": message, "detail": message}).encode()
        ctype = b"application/json"
    else:
        from html import escape

        body = (f"<!doctype html><title>sd-lora studio: {status}</title><h1>{status}</h1>"
                f"<p class=error>{escape(message)}</p>").encode()
        ctype = b"text/html; charset=utf-8"
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
