"""Files PESF Studio offers for download (exports): each at an unguessable URL that also carries the token.

``/pesf/download/<random id>/<file name>[?token=...]`` serves the file as an attachment. The id is 128 random
bits, so a URL cannot be guessed even when Studio runs without a token; with a token, the access middleware
checks it as for every request.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import quote

__all__ = ["DOWNLOAD_PREFIX", "Downloads"]

DOWNLOAD_PREFIX = "/pesf/download"


class Downloads:
    """The offered files, by id.

    Args:
        token: the access token appended to the URLs (``None``: none).
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self._files: dict[str, Path] = {}

    def offer(self, path: str | Path) -> str:
        """Offer ``path``; returns its URL (relative to the server root)."""
        path = Path(path)
        key = secrets.token_hex(16)
        self._files[key] = path
        url = f"{DOWNLOAD_PREFIX}/{key}/{quote(path.name)}"
        return f"{url}?token={self.token}" if self.token else url

    def get(self, key: str) -> Path | None:
        path = self._files.get(key)
        return path if path is not None and path.is_file() else None

    def clear(self) -> None:
        self._files.clear()

    def add_route(self, router) -> None:
        """Serve the offered files from an aiohttp ``router``."""
        from aiohttp import web

        async def download(request: web.Request) -> web.StreamResponse:
            path = self.get(request.match_info["key"])
            if path is None:
                raise web.HTTPNotFound(
                    text="PESF Studio: no such download (exported files last as long as the server)\n"
                )
            return web.FileResponse(
                path, headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(path.name)}"}
            )

        router.add_get(DOWNLOAD_PREFIX + "/{key}/{name}", download)
