"""PESF Studio: start-up time, click-to-view latency and memory with one client (headless Chromium).

Prints:
* server start: from launching ``pesf studio`` to the printed address (listening), and to the sample CT shown
  with the model loaded;
* click to view: from a click on the liver in the axial view to the segment in the server's scene and to the
  first streamed frame of the view after it, for the first click (the image encoder runs) and a second click
  in the same region (cached embedding);
* memory: resident set size of the server with one client connected, after the clicks.

    python Testing/Benchmarks/bench_studio.py [--model default] [--repeats 1]

With ``PESF_UPDATE_SCREENSHOTS=1`` (or when it is missing) it saves ``Resources/Screenshots/studio.png``: the
page with the liver segmented and the confidence map shown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from studio_server import StudioServer, chromium, view_image, xy_offset_for_ras  # noqa: E402

from pesf.resources import resources_dir, sample_data_dir  # noqa: E402

LIVER = 5
TIMEOUT_S = 300.0


def _until(condition, timeout: float = TIMEOUT_S, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met")


def _present(find):
    """``find()``, or ``None`` while the element is not in the page yet."""
    from selenium.common.exceptions import NoSuchElementException

    try:
        return find()
    except NoSuchElementException:
        return None


def _liver_points(labels: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """The deepest liver voxel of slice ``k`` and one 3 voxels away, both inside the liver."""
    inside = ndimage.distance_transform_edt(labels[:, :, k])
    i, j = np.unravel_index(np.argmax(inside), inside.shape)
    second = (i + 3, j, k) if labels[i + 3, j, k] else (i - 3, j, k)
    return [(int(i), int(j), k), tuple(int(v) for v in second)]


_FRAME_RECORDER = """
const img = arguments[0];
window.__pesfFrames = [];
if (window.__pesfObserver) window.__pesfObserver.disconnect();
window.__pesfObserver = new MutationObserver(() => window.__pesfFrames.push(Date.now() / 1000));
window.__pesfObserver.observe(img, {attributes: true, attributeFilter: ["src"]});
"""


def _click(driver, server, ijk) -> tuple[float, float]:
    """Click voxel ``ijk`` in the axial view; returns seconds from the click until the server's scene holds
    the new segment, and until the first streamed frame of the axial view after that (the page's clock and
    the server's are the same machine's wall clock)."""
    from selenium.webdriver.common.action_chains import ActionChains

    status = server.status()
    clicks_before = status["segment"]["organs"]["liver"]["clicks"]
    ras = np.asarray(status["volume"]["ijk_to_ras"]).reshape(4, 4) @ [*ijk, 1.0]
    image = view_image(driver, "Red")
    offset = xy_offset_for_ras(driver, image, status["views"]["Red"], ras)
    driver.execute_script(_FRAME_RECORDER, image)
    actions = ActionChains(driver).move_to_element_with_offset(image, *offset).click()
    start = time.time()
    actions.perform()

    def applied():
        organ = server.status()["segment"]["organs"]["liver"]
        return organ["updated_at"] if organ["clicks"] > clicks_before and organ["voxels"] > 0 else None

    updated_at = _until(applied, every=0.05)
    frame = _until(
        lambda: next(
            (t for t in driver.execute_script("return window.__pesfFrames") if t >= updated_at), None
        )
    )
    return updated_at - start, frame - start


def _toggle_overlay(driver) -> float:
    """Seconds from switching the confidence overlay off and on to the next frame of the axial view: how fast
    a change of the scene reaches the page when no inference runs."""
    from selenium.webdriver.common.by import By

    switch = driver.find_element(By.CSS_SELECTOR, "#pesf-confidence")
    times = []
    for _ in range(2):
        driver.execute_script(_FRAME_RECORDER, view_image(driver, "Red"))
        start = time.time()
        switch.click()
        times.append(
            _until(lambda: next(iter(driver.execute_script("return window.__pesfFrames")), None)) - start
        )
    return statistics.median(times)


def run(model: str, window: str) -> dict:
    folder = sample_data_dir() / "A_ts_ct"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "A_ct_full_seg_total_fast.nii.gz")))
    labels = labels.transpose(2, 1, 0) == LIVER
    server = StudioServer(["--model", model], token="bench-token-0123456789abcdef")
    driver = None
    try:
        server.wait_address(TIMEOUT_S)
        driver = chromium(window)
        driver.get(server.address)
        _until(lambda: server.status()["volume"] and server.status()["segment"]["model"], every=0.05)
        _until(lambda: _present(lambda: view_image(driver, "Red").get_attribute("src")), every=0.05)
        ready_s = time.perf_counter() - server.started
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        driver.find_element(By.ID, "pesf-organ-input").send_keys("Liver", Keys.ESCAPE)
        driver.find_element(By.ID, "pesf-add-organ").click()
        _until(lambda: "liver" in server.status()["segment"]["organs"])
        ijk_to_ras = np.asarray(server.status()["volume"]["ijk_to_ras"]).reshape(4, 4)
        k_of = lambda: int(round((server.status()["views"]["Red"]["slice_offset"] - ijk_to_ras[2, 3]) / 3.0))  # noqa: E731
        target = int(np.median(np.nonzero(labels.any(axis=(0, 1)))[0]))
        thumb = driver.find_element(
            By.XPATH, "//div[@id='pesf-view-Red']/..//div[contains(@class,'v-slider-thumb')]"
        )
        thumb.send_keys((Keys.ARROW_RIGHT if target > k_of() else Keys.ARROW_LEFT) * abs(target - k_of()))
        _until(lambda: k_of() == target)
        points = _liver_points(labels, target)
        first = _click(driver, server, points[0])
        confident = lambda: server.status()["segment"]["organs"]["liver"]["confidence"] is not None  # noqa: E731
        _until(confident, every=0.05)  # the first click's confidence is computed before the next click runs
        second = _click(driver, server, points[1])
        _until(confident, every=0.05)
        refresh = _toggle_overlay(driver)
        time.sleep(1.0)  # let the confidence overlay reach the page before measuring and the screenshot
        rss = server.rss_mb()
        screenshot = resources_dir() / "Screenshots" / "studio.png"
        if not screenshot.exists() or os.environ.get("PESF_UPDATE_SCREENSHOTS") == "1":
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshot))
        return {
            "listening_s": server.listening_s,
            "ready_s": ready_s,
            "first_scene_s": first[0],
            "first_view_s": first[1],
            "next_scene_s": second[0],
            "next_view_s": second[1],
            "refresh_s": refresh,
            "rss_mb": rss,
        }
    finally:
        if driver is not None:
            driver.quit()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model for the server (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="server starts to average over")
    parser.add_argument("--window", default="1400,1000", help="browser window size (default: %(default)s)")
    args = parser.parse_args()
    runs = [run(args.model, args.window) for _ in range(args.repeats)]

    def show(key: str) -> str:
        values = [r[key] for r in runs]
        text = f"{statistics.median(values):.2f}"
        return text + (f" (min {min(values):.2f}, max {max(values):.2f})" if len(values) > 1 else "")

    print(
        f"PESF Studio, model {args.model}, sample CT 122x101x112, window {args.window}, {args.repeats} run(s)"
    )
    print(
        f"server start: listening after {show('listening_s')} s, CT and model ready after {show('ready_s')} s"
    )
    print(
        f"first click:  segment in the scene {show('first_scene_s')} s, in the view {show('first_view_s')} s"
    )
    print(f"next click:   segment in the scene {show('next_scene_s')} s, in the view {show('next_view_s')} s")
    print(f"view refresh: overlay toggled to new frame {show('refresh_s')} s (no inference)")
    print(f"memory:       server RSS with one client {show('rss_mb')} MB")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
