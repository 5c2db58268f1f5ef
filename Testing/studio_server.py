"""PESF Studio in a subprocess and a headless Chromium driving it: shared by the Studio test and benchmark.

* :class:`StudioServer` starts ``pesf studio ... --port <free port> --status-api`` on 127.0.0.1, waits for the
  address it prints, reads its JSON status and stops it (by its process id).
* :func:`chromium` starts headless Chromium through chromedriver with a new, empty profile.
* :func:`axial_click_offset` turns an RAS point into the offset, from the centre of a slice view's streamed
  image, to click at: through the view's XY-to-RAS matrix and the image's size in the page.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

__all__ = [
    "CHROMEDRIVER",
    "StudioServer",
    "changed_pixels",
    "chromium",
    "free_port",
    "view_image",
    "xy_offset_for_ras",
]

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StudioServer:
    """``pesf studio`` in a subprocess.

    Args:
        args: arguments of ``pesf studio`` (image, ``--model``, ``--workspace``...).
        token: the access token (passed as ``--token``; used by :meth:`status` and :meth:`url`).
        log_path: where the server's output goes (default: a temporary file).

    ``$PESF_STUDIO_FLAGS`` adds options of ``pesf`` itself, e.g. ``-v`` to log the server's work.
    """

    def __init__(self, args: list[str], token: str | None = None, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.token = token
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path or tempfile.mkstemp(prefix="pesf-studio-", suffix=".log")[1])
        env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow", PYTHONUNBUFFERED="1")
        command = [
            sys.executable,
            "-m",
            "pesf",
            *os.environ.get("PESF_STUDIO_FLAGS", "").split(),
            "studio",
            *args,
            "--port",
            str(self.port),
            "--status-api",
        ]
        if token:
            command += ["--token", token]
        self.started = time.perf_counter()
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env, start_new_session=True
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.address: str | None = None
        self.listening_s: float | None = None

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._log.write(line)
            self._lines.put(line)

    def wait_address(self, timeout: float = 120.0) -> str:
        """The address the server prints once it listens."""
        deadline = time.monotonic() + timeout
        while self.address is None:
            if self.process.poll() is not None:
                raise RuntimeError(f"pesf studio exited with {self.process.returncode}:\n{self.log()}")
            try:
                line = self._lines.get(timeout=max(0.01, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pesf studio printed no address:\n{self.log()}") from None
                continue
            if line.startswith("PESF Studio: http"):
                self.address = line.split(": ", 1)[1].strip()
                self.listening_s = time.perf_counter() - self.started
        return self.address

    def url(self, path: str = "/", token: bool = True) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}{path}" + (f"{sep}token={self.token}" if token and self.token else "")

    def get(self, path: str, token: bool = True, headers: dict | None = None) -> tuple[int, bytes]:
        """``(status code, body)`` of a GET request (errors included)."""
        request = urllib.request.Request(self.url(path, token), headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def status(self) -> dict:
        code, body = self.get("/pesf/status")
        if code != 200:
            raise RuntimeError(f"status answered {code}: {body[:200]!r}")
        return json.loads(body)

    def rss_mb(self) -> float:
        """Resident memory of the server process (Linux)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def chromium(window_size: str | None = None):
    """Headless Chromium (selenium) with a new empty profile; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    if window_size:
        options.add_argument(f"--window-size={window_size}")
    profile = tempfile.mkdtemp(prefix="pesf-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    quit_browser = driver.quit

    def quit_and_remove_profile() -> None:
        try:
            quit_browser()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit_and_remove_profile
    return driver


def view_image(driver, view: str = "Red"):
    """The streamed image of a view (``Red`` axial, ``Yellow`` sagittal, ``Green`` coronal, ``ThreeD``)."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.XPATH, f"//div[@id='pesf-view-{view}']/..//img")


def xy_offset_for_ras(driver, image, view_status: dict, ras) -> tuple[int, int]:
    """Offset from the centre of ``image`` (a view's streamed image) of the pixel showing RAS point ``ras``.

    Args:
        view_status: the view's entry of the server status (``xy_to_ras``, row major).
    """
    matrix = np.asarray(view_status["xy_to_ras"], dtype=float).reshape(4, 4)
    xy, *_ = np.linalg.lstsq(matrix[:3, :2], np.asarray(ras[:3], dtype=float) - matrix[:3, 3], rcond=None)
    width, height, natural_w, natural_h = driver.execute_script(
        "const i = arguments[0]; return [i.clientWidth, i.clientHeight, i.naturalWidth, i.naturalHeight]",
        image,
    )
    u = (xy[0] + 0.5) * width / natural_w
    v = (natural_h - 0.5 - xy[1]) * height / natural_h
    return int(round(u - width / 2)), int(round(v - height / 2))


def changed_pixels(png_a: bytes, png_b: bytes, tolerance: int = 24) -> int:
    """How many pixels of two same-sized PNG screenshots differ by more than ``tolerance`` in some channel."""
    import io

    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png_a)).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(png_b)).convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        return int(max(a.size, b.size) // 3)
    return int((np.abs(a - b).max(axis=2) > tolerance).sum())
