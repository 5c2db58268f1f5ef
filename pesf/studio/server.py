"""Serving PESF Studio: the trame server, its access checks, extra routes and the printed address.

``serve`` blocks until the server stops (Ctrl+C). Routes besides the page and its websocket:

* ``/pesf/download/<id>/<name>``: exported files (see :mod:`.downloads`);
* ``/pesf/status`` (only with ``status_api``): a JSON report of what the server holds, for tests and
  monitoring: volume, views, organs with voxel counts, training, last error.

Every route, the page and the websocket included, goes through :class:`~.security.AccessPolicy`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable

from pesf.errors import PesfError
from pesf.studio.security import LOCAL_HOST, AccessPolicy, check_serving

__all__ = ["STATUS_PATH", "configure_rendering", "serve", "studio_url"]

logger = logging.getLogger(__name__)

STATUS_PATH = "/pesf/status"


def configure_rendering() -> None:
    """Render off screen through EGL when there is no display and the user chose no render window."""
    if not os.environ.get("DISPLAY") and not os.environ.get("VTK_DEFAULT_OPENGL_WINDOW"):
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"
    os.environ.setdefault("WSLINK_READY_MSG", "")  # wslink's own start-up line would mix with ours


def studio_url(host: str, port: int, token: str | None) -> str:
    """The address of the page (with the token when there is one); a wildcard host shows the machine's name."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the address, not binding
        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def _add_routes(router, studio, status_api: bool) -> None:
    from aiohttp import web

    studio.downloads.add_route(router)
    if status_api:

        async def status(_request: web.Request) -> web.Response:
            try:
                return web.json_response(studio.status())
            except Exception as exc:  # noqa: BLE001 - a status request must never break the server
                logger.exception("status report failed")
                return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=500)

        router.add_get(STATUS_PATH, status)


def serve(
    config,
    host: str = LOCAL_HOST,
    port: int = 8080,
    status_api: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Run PESF Studio until it is stopped; returns an exit status.

    Args:
        config: a :class:`~.app.StudioConfig` (its ``token`` is checked and completed here).
        host: the interface to listen on (a non-loopback one needs a token; one is generated if missing).
        port: the port (``0``: any free port).
        status_api: serve ``/pesf/status``.
        on_ready: called with the page's address once the server listens (default: print it).

    Raises:
        pesf.errors.PesfError: bad token, or the address cannot be served on.
    """
    config.token = check_serving(host, config.token)
    configure_rendering()
    from trame.app import get_server

    from pesf.studio.app import StudioApp

    policy = AccessPolicy(config.token, port)
    server = get_server("pesf_studio", client_type="vue3")
    argv, sys.argv = sys.argv, sys.argv[:1]  # trame reads sys.argv; Studio's options are not trame's
    studio = None
    try:
        studio = StudioApp(server, config)

        @server.controller.add("on_server_bind")
        def _bind(wslink_server) -> None:
            wslink_server.app.middlewares.append(policy.middleware())
            _add_routes(wslink_server.app.router, studio, status_api)

        @server.controller.add("on_server_ready")
        def _ready(**_) -> None:
            policy.port = server.port
            url = studio_url(host, server.port, config.token)
            if on_ready is not None:
                on_ready(url)
            else:
                print(f"PESF Studio: {url}", flush=True)
                if host != LOCAL_HOST:
                    print(
                        "Anyone with this address can use Studio, and plain HTTP does not hide the token on the "
                        "network: prefer an SSH tunnel or a TLS reverse proxy.",
                        flush=True,
                    )

        try:
            server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0)
        except OSError as exc:  # the port is taken, or the host is not an address of this machine
            raise PesfError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc}; choose another --port or --host"
            ) from None
    finally:
        sys.argv = argv
        if studio is not None:
            studio.cleanup()
    return 0
