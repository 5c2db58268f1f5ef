"""The background trainer as real processes: status file, stop requests, SIGTERM, SIGKILL and resume, the
workspace lock, and a two-process torchrun run.

Every wait polls files or process state with a generous timeout; no assertion depends on timing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_trainer import STATUS_KEYS, make_workspace, tiny_checkpoint, write_config

import pesf
from pesf.train.status import read_status
from pesf.train.worker import list_versions

TIMEOUT_S = 600.0  # a shared, loaded CI machine can be slow; a hang still fails


class Trainer:
    """A ``python -m pesf.train`` (or other) process with its output in files."""

    def __init__(self, args: list[str], folder: Path, env: dict[str, str]) -> None:
        self.out = folder / f"out-{time.monotonic_ns()}.txt"
        self.err = self.out.with_suffix(".err")
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, env=env)

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_for(what: str, condition: Callable[[], object], trainer: Trainer | None = None) -> object:
    """Poll ``condition`` until it is truthy; fail when the trainer exits first or after TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        value = condition()
        if value:
            return value
        if trainer is not None and trainer.proc.poll() is not None:
            value = condition()
            if value:
                return value
            pytest.fail(
                f"the trainer exited ({trainer.proc.returncode}) before {what}: {trainer.stderr[-2000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def status_is(ws: Path, state: str, min_step: int = 0) -> Callable[[], dict | None]:
    def check():
        status = read_status(ws)
        return status if status and status["state"] == state and status["step"] >= min_step else None

    return check


@pytest.fixture(scope="module")
def template(samples, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("template")
    return make_workspace(root / "ws", samples), tiny_checkpoint(root / "tiny.pt")


@pytest.fixture
def ws(template, tmp_path) -> Path:
    return Path(shutil.copytree(template[0], tmp_path / "ws"))


@pytest.fixture
def env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture
def start(tmp_path, env, template):
    """Start ``python -m pesf.train WS [args]`` with a config of the given settings; kill leftovers at the end."""
    started: list[Trainer] = []

    def launch(ws: Path, *args: str, module: str = "pesf.train", **settings) -> Trainer:
        config = write_config(tmp_path / f"config-{len(started)}.json", template[1], **settings)
        trainer = Trainer(
            [sys.executable, "-m", module, str(ws), "--config", str(config), *args], tmp_path, env
        )
        started.append(trainer)
        return trainer

    yield launch
    for trainer in started:
        trainer.kill()


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``pesf ARGS`` in a new process (the same interpreter as the tests)."""
    code = "import sys; from pesf.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=TIMEOUT_S
    )


# --------------------------------------------------------------------------------------------- tests
def test_run_reports_progress_and_writes_a_version(ws, start):
    trainer = start(ws, steps=3, val_every=2)
    running = wait_for("status running", status_is(ws, "running"), trainer)
    assert running["pid"] == trainer.proc.pid and STATUS_KEYS <= set(running)
    assert trainer.wait() == 0, trainer.stderr
    status = read_status(ws)
    assert status["state"] == "finished" and status["step"] == status["total_steps"] == 3
    assert status["model_version"] == "v1" and status["device"] == "cpu"
    assert set(status["val_dice"]) == {"click_1", "click_3"}

    assert [n for n, _ in list_versions(ws)] == [1]
    version = ws / "models" / "v1"
    metrics = json.loads((version / "metrics.json").read_text())
    card = json.loads((version / "card.json").read_text())
    assert metrics["step"] == 3 and metrics["val_step"] == 3 and 0 <= metrics["val_dice"]["click_1"] <= 1
    assert card["settings"]["steps"] == 3 and card["code"]["pesf_version"] == pesf.__version__
    assert card["data"]["val_cases"] == ["v"] and [d["organ"] for d in card["data"]["dropped"]] == [
        "kidney_left"
    ]
    model = pesf.load_model(version / "model.pt")
    assert model.trained and model.config.name == "tiny" and model.metadata["training"]["version"] == "v1"

    curves = json.loads((ws / "curves.json").read_text())
    assert curves["step"] == [1, 2, 3] and curves["val_step"] == [2, 3]
    assert (ws / "curves.png").stat().st_size > 0
    log = (ws / "train.log").read_text()
    assert "step 3/3" in log and "wrote model version v1" in log
    assert not (ws / "STOP").exists()


def test_second_trainer_is_refused_and_stop_request_waits(ws, start, env):
    trainer = start(ws, steps=100_000, save_every=0)
    wait_for("the first step", status_is(ws, "running", min_step=1), trainer)

    second = start(ws)
    assert second.wait() == 2
    message = second.stderr.strip()
    assert "\n" not in message and f"pid {trainer.proc.pid}" in message and "already running" in message

    stop = _cli(["train", str(ws), "--stop", "--wait"], env)
    assert stop.returncode == 0, stop.stderr
    assert trainer.wait() == 0, trainer.stderr
    status = read_status(ws)
    assert status["state"] == "stopped" and "STOP file" in status["message"]
    assert status["model_version"] == "v1" and (ws / "models" / "v1" / "model.pt").is_file()
    state = torch.load(ws / "state" / "last.pt", weights_only=True)
    assert not state["finished"] and state["trainer"]["step"] == status["step"]
    assert not (ws / "STOP").exists()


def test_sigterm_stops_cleanly(ws, start):
    trainer = start(ws, steps=100_000, save_every=0)
    wait_for("the first step", status_is(ws, "running", min_step=1), trainer)
    trainer.proc.send_signal(signal.SIGTERM)
    assert trainer.wait() == 0, trainer.stderr
    status = read_status(ws)
    assert status["state"] == "stopped" and "SIGTERM" in status["message"]
    assert [n for n, _ in list_versions(ws)] == [1]
    pesf.load_model(ws / "models" / "v1" / "model.pt")


def test_sigkill_then_resume_continues_the_step_count(ws, start):
    trainer = start(ws, steps=100_000, save_every=1)
    saved = ws / "state" / "last.pt"
    wait_for("a saved state after step 2", lambda: saved.is_file() and read_status(ws)["step"] >= 2, trainer)
    trainer.proc.kill()  # SIGKILL: no clean-up at all
    trainer.wait()
    step = torch.load(saved, weights_only=True)["trainer"]["step"]
    assert step >= 1 and read_status(ws)["state"] == "running"  # what a crash leaves behind

    resumed = start(ws, "--max-steps", str(step + 2), save_every=1)
    assert resumed.wait() == 0, resumed.stderr
    status = read_status(ws)
    assert status["state"] == "finished" and status["step"] == step + 2
    assert f"resumed from step {step}" in (ws / "train.log").read_text()
    card = json.loads((ws / "models" / "v1" / "card.json").read_text())
    assert card["time"]["resumed_from"] == [step] and card["metrics"]["step"] == step + 2
    assert json.loads((ws / "curves.json").read_text())["step"] == list(range(1, step + 3))


def test_torchrun_two_processes(ws, template, tmp_path, env):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun is not installed next to this Python")
    config = write_config(tmp_path / "c.json", template[1])
    args = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "pesf.train", str(ws)]
    trainer = Trainer([*args, "--config", str(config), "--max-steps", "2"], tmp_path, env)
    assert trainer.wait() == 0, trainer.stderr[-3000:]
    status = read_status(ws)
    assert status["state"] == "finished" and status["step"] == 2 and status["world_size"] == 2
    assert [n for n, _ in list_versions(ws)] == [1]
    card = json.loads((ws / "models" / "v1" / "card.json").read_text())
    assert card["world_size"] == 2
    pesf.load_model(ws / "models" / "v1" / "model.pt")


_LEAVE_TOGETHER = """
import json, sys, time
import torch.distributed as dist
from pesf.train.distributed import setup_distributed

with setup_distributed("cpu") as ctx:
    parts = [None, None]
    dist.all_gather_object(parts, ctx.rank)  # the last collective, as a sharded run ends with
    if ctx.rank == 0:
        time.sleep(1.5)  # rank 0 still busy (writing its report) when rank 1 is done
    done = time.time()
left = time.time()
with open(f"{sys.argv[1]}/rank{ctx.rank}.json", "w") as f:
    json.dump({"done": done, "left": left, "parts": parts}, f)
"""


def test_torchrun_ranks_leave_the_process_group_together(tmp_path, env):
    """A rank that is done waits for the others before it tears down its connections (a rank that tore them
    down while another was still finishing a collective on them made that one abort)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun is not installed next to this Python")
    script = tmp_path / "leave.py"
    script.write_text(_LEAVE_TOGETHER, encoding="utf-8")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert first["parts"] == second["parts"] == [0, 1]
    assert second["done"] < first["done"]  # rank 1 was done first ...
    assert second["left"] >= first["done"]  # ... and left only once rank 0 was done too
