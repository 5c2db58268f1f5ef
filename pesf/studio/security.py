"""Who may talk to PESF Studio: the address it serves on, its access token and the checks on every request.

* By default Studio listens on ``127.0.0.1`` only. Requests must name it in their ``Host`` header
  (``127.0.0.1:PORT`` or ``localhost:PORT``), which defeats DNS rebinding from a web page.
* Listening on any other interface needs ``--host`` and an access token (``--token``, or one generated and
  printed). Every request, HTTP or websocket, must then carry it, else it is answered 403:
  the page URL carries ``?token=...``; the answer to it sets a cookie (HttpOnly, SameSite=Strict, named
  after the port) so the page's scripts, its websocket and its download links carry the token as well.
  Download links also hold ``?token=`` so they can be fetched outside the page.
* A websocket whose ``Origin`` is another site is refused (a foreign page cannot drive Studio).

Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pesf.errors import PesfError

__all__ = ["LOCAL_HOST", "AccessPolicy", "check_serving", "new_token"]

logger = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{16,128}$")
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def new_token() -> str:
    """A fresh access token: 32 hexadecimal characters (128 bits)."""
    return secrets.token_hex(16)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_serving(host: str, token: str | None, generate: bool = True) -> str | None:
    """Check the address and token Studio is asked to serve with; returns the token to use (or ``None``).

    Args:
        host: the interface to listen on.
        token: the token given by the user, if any.
        generate: make a token when one is needed and none was given.

    Raises:
        PesfError: a malformed token, or a non-loopback host without a token (and ``generate`` false).
    """
    if token is not None and not _TOKEN_PATTERN.match(token):
        raise PesfError("--token must be 16 to 128 letters, digits, '-' or '_'")
    if token is None and not _is_loopback(host):
        if not generate:
            raise PesfError(f"serving on {host} needs an access token: give --token")
        token = new_token()
    return token


@dataclass
class AccessPolicy:
    """The checks applied to every request (see the module documentation).

    Attributes:
        token: the access token, or ``None`` (then only loopback ``Host`` names are accepted).
        port: the port served on (``0`` until known); names the cookie and the accepted ``Host`` values.
    """

    token: str | None = None
    port: int = 0

    @property
    def cookie_name(self) -> str:
        return f"pesf_studio_{self.port}"

    def _token_matches(self, value: str | None) -> bool:
        return bool(value) and self.token is not None and hmac.compare_digest(value, self.token)

    def reason_to_refuse(
        self, host: str, query_token: str | None, cookie_token: str | None, origin: str | None
    ):
        """Why a request is refused, or ``None`` when it may pass. ``host`` is its ``Host`` header."""
        if self.token is not None:
            if not (self._token_matches(query_token) or self._token_matches(cookie_token)):
                return "missing or wrong access token"
        elif host.lower() not in {f"{name}:{self.port}" for name in _LOOPBACK_NAMES}:
            return f"unexpected Host header {host!r}"
        if origin and origin != "null" and urlsplit(origin).netloc.lower() != host.lower():
            return f"cross-site request from {origin}"
        return None

    def middleware(self) -> Callable:
        """An aiohttp middleware enforcing the policy (403 with a one-line reason when refused)."""
        from aiohttp import web

        policy = self

        @web.middleware
        async def studio_access(request: web.Request, handler):
            is_websocket = request.headers.get("Upgrade", "").lower() == "websocket"
            origin = request.headers.get("Origin") if is_websocket else None
            query_token = request.query.get("token")
            reason = policy.reason_to_refuse(
                request.host or "", query_token, request.cookies.get(policy.cookie_name), origin
            )
            if reason is not None:
                logger.warning(
                    "refused %s %s from %s: %s", request.method, request.path, request.remote, reason
                )
                return web.Response(status=403, text=f"PESF Studio: access refused ({reason})\n")
            response = await handler(request)
            if policy.token is not None and policy._token_matches(query_token) and not is_websocket:
                response.set_cookie(
                    policy.cookie_name, policy.token, httponly=True, samesite="Strict", path="/"
                )
            return response

        return studio_access
