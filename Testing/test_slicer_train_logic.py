"""PESF Train's Logic on slicer-core: workspace tables, the training subprocess, progress and plot nodes.

The status files are read both as the documented schema describes them (written here) and from a real
two-step ``pesf train`` run on a case made from the sample CT. Cancelling is checked on a stand-in trainer
that starts a child process, so killing the whole tree is observable.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from slicer_scene import SlicerTestApp

from pesf.io.labels import totalsegmentator_label_names
from pesf.train.store import CaseStore, OrganRecord

# isort: split
# (after slicer_scene, which puts the modules' folders on sys.path as Slicer does)
from PESFSegmentLib import ModelChoice, activeTrainedModel
from PESFTrainLib import CANCELLED_MESSAGE, PESFTrainLogic, TrainEvent, progressFromStatus

RUN_TIMEOUT = 600.0


@pytest.fixture
def app():
    app = SlicerTestApp.create()
    yield app
    app.close()


@pytest.fixture
def events():
    return []


@pytest.fixture
def logic(app, events):
    logic = PESFTrainLogic(app.scene, eventCallback=lambda event, info: events.append((event, info)))
    yield logic
    if logic.running:
        logic.cancelTraining()


def add_sample_case(workspace: Path, ct_volume, ct_labels, case_id: str = "A_ct") -> None:
    names = totalsegmentator_label_names("total")
    values = {name: value for value, name in names.items()}
    label = np.zeros(ct_labels.shape, np.uint8)
    label[ct_labels.array == values["liver"]] = 1
    label[ct_labels.array == values["spleen"]] = 2
    records = [
        OrganRecord("liver", 1, "accepted", source="clicks", author="tester"),
        OrganRecord("spleen", 2, "pseudo", confidence=0.91, source="automatic", model_version="v0"),
    ]
    CaseStore(workspace, create=True).add_case(
        ct_volume, ct_volume.with_array(label), records, case_id=case_id
    )


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def process_state(pid: int) -> str | None:
    """Linux process state letter ('R', 'S', 'Z', ...) or None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


# --------------------------------------------------------------------------- the documented schema


def test_status_and_curves_become_progress_and_plot_nodes(logic, events, tmp_path):
    workspace = tmp_path / "workspace"
    CaseStore(workspace, create=True)
    write_json(
        workspace / "status.json",
        {
            "state": "running",
            "pid": os.getpid(),
            "epoch": 3,
            "step": 120,
            "total_steps": 1000,
            "loss": 0.412,
            "val_dice": {"click_1": 0.71, "click_5": 0.83},
            "eta_s": 1530.0,
            "model_version": "v1",
            "message": "training",
            "started": "2025-01-01T10:00:00+00:00",
            "updated": "2025-01-01T10:20:00+00:00",
            "device": "cpu",
            "world_size": 1,
        },
    )
    curves = {
        "step": [1, 2, 3, 4, 5],
        "loss": [1.2, 1.0, 0.9, None, 0.7],
        "lr": [1e-5] * 5,
        "val_step": [2, 5],
        "val_dice": {"click_1": [0.5, 0.6], "click_5": [0.7, 0.8]},
    }
    write_json(workspace / "curves.json", curves)
    (workspace / "models" / "v1").mkdir(parents=True)
    (workspace / "models" / "v1" / "model.pt").write_bytes(b"weights")
    write_json(
        workspace / "models" / "v1" / "metrics.json",
        {"version": "v1", "step": 100, "loss": 0.45, "val_dice": {"click_1": 0.7, "click_5": 0.81}},
    )
    logic.setWorkspace(workspace)
    progress = logic.poll()
    assert (progress.state, progress.step, progress.totalSteps) == ("running", 120, 1000)
    assert progress.fraction == pytest.approx(0.12) and progress.active
    assert progress.etaText() == "25 min 30 s"
    summary = progress.summary()
    assert "step 120 of 1000" in summary and "loss 0.412" in summary and "Dice 0.830 (click 5)" in summary
    assert "about 25 min 30 s left" in summary
    assert [e for e, _ in events] == [TrainEvent.PROGRESS]
    # plots: loss per step and Dice per validation, one chart with every series
    loss, dice, chart = logic.curves.lossTable, logic.curves.diceTable, logic.curves.chartNode
    assert loss.GetNumberOfRows() == 5 and np.isnan(float(loss.GetCellText(3, 1)))
    assert dice.GetNumberOfRows() == 2 and dice.GetNumberOfColumns() == 3
    assert chart.GetNumberOfPlotSeriesNodes() == 3
    series = [chart.GetNthPlotSeriesNode(i) for i in range(3)]
    assert {(s.GetTableNodeID(), s.GetYColumnName()) for s in series} == {
        (loss.GetID(), "loss"),
        (dice.GetID(), "click_1"),
        (dice.GetID(), "click_5"),
    }
    versions = logic.versionsTable
    assert versions.GetNumberOfRows() == 1
    assert [versions.GetCellText(0, c) for c in range(5)] == ["v1", "100", "0.450", "0.700", "0.810"]
    # a newer curves file is read again; an unchanged one is not
    curves["step"].append(6), curves["loss"].append(0.6)
    write_json(workspace / "curves.json", curves)
    os.utime(workspace / "curves.json", ns=(time.time_ns(), time.time_ns() + 10**9))
    logic.poll()
    assert loss.GetNumberOfRows() == 6
    # an active status whose process is gone is reported as interrupted
    status = json.loads((workspace / "status.json").read_text())
    status["pid"] = 2**22 + 12345
    assert progressFromStatus(status).state == "interrupted"
    assert progressFromStatus(None).summary() == "No training run in this workspace yet."


def test_cases_table_and_log_tail(logic, tmp_path, ct_volume, ct_labels):
    workspace = tmp_path / "workspace"
    add_sample_case(workspace, ct_volume, ct_labels)
    logic.setWorkspace(workspace)
    table = logic.casesTable
    rows = [[table.GetCellText(r, c) for c in range(5)] for r in range(table.GetNumberOfRows())]
    assert rows == [
        ["A_ct", "liver", "accepted", "", "clicks"],
        ["A_ct", "spleen", "pseudo", "0.910", "automatic"],
    ]
    assert logic.newLogLines() == []
    with open(workspace / "train.log", "w", encoding="utf-8") as log:
        log.write("line 1\nline 2\npartial")
    assert logic.newLogLines() == ["line 1", "line 2"]
    with open(workspace / "train.log", "a", encoding="utf-8") as log:
        log.write(" line 3\nline 4\n")
    assert logic.newLogLines() == ["partial line 3", "line 4"]
    assert logic.newLogLines() == []
    with pytest.raises(Exception, match="not a PESF workspace|does not exist"):
        logic.setWorkspace(tmp_path / "not-a-workspace")


def test_start_needs_cases_and_one_trainer_per_workspace(logic, tmp_path):
    with pytest.raises(ValueError, match="Choose a workspace"):
        logic.startTraining()
    workspace = tmp_path / "workspace"
    CaseStore(workspace, create=True)
    logic.setWorkspace(workspace)
    with pytest.raises(ValueError, match="no cases yet"):
        logic.startTraining()
    write_json(
        workspace / "status.json", {"state": "running", "pid": os.getpid(), "step": 1, "total_steps": 9}
    )
    with pytest.raises(ValueError, match=f"process {os.getpid()}"):
        logic.startTraining()


# --------------------------------------------------------------------------- stop and cancel

FAKE_TRAINER = """
import json, os, signal, subprocess, sys, time
workspace = sys.argv[sys.argv.index("pesf.train") + 1]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
status = {"state": "running", "pid": os.getpid(), "step": 1, "total_steps": 100, "message": "training"}
with open(os.path.join(workspace, "status.json"), "w") as f:
    json.dump(status, f)
def stop(signum, frame):
    status.update(state="stopped", message="stopped at step 1 (SIGTERM)")
    with open(os.path.join(workspace, "status.json"), "w") as f:
        json.dump(status, f)
    child.kill()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
with open(os.path.join(workspace, "pids"), "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
print("fake trainer running", flush=True)
while True:
    time.sleep(0.1)
"""


@pytest.fixture
def fake_python(tmp_path):
    """An interpreter stand-in that runs the fake trainer whatever module it is asked to run."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(textwrap.dedent(FAKE_TRAINER), encoding="utf-8")
    launcher = tmp_path / "fake-python"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n', encoding="utf-8")
    launcher.chmod(0o755)
    return str(launcher)


def started_pids(workspace: Path, logic) -> tuple[int, int]:
    deadline = time.monotonic() + 60
    while not (workspace / "pids").exists():
        assert logic.running, logic.process.outputTail()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return tuple(int(p) for p in (workspace / "pids").read_text().split())


def test_cancel_kills_the_process_tree_and_records_it(
    logic, events, tmp_path, ct_volume, ct_labels, fake_python
):
    workspace = tmp_path / "workspace"
    add_sample_case(workspace, ct_volume, ct_labels)
    logic.setWorkspace(workspace)
    process = logic.startTraining(maxSteps=100, python=fake_python)
    trainer, child = started_pids(workspace, logic)
    assert process.pid == trainer and logic.running
    assert logic.poll().state == "running"
    logic.cancelTraining()
    assert not logic.running and process.state == "cancelled"
    for pid in (trainer, child):
        deadline = time.monotonic() + 10
        while process_state(pid) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_state(pid) in (None, "Z"), f"process {pid} survived the cancel"
    status = json.loads((workspace / "status.json").read_text())
    assert status["state"] == "stopped" and status["message"] == CANCELLED_MESSAGE
    assert CANCELLED_MESSAGE in (workspace / "train.log").read_text()
    progress = logic.poll()
    assert progress.state == "cancelled"
    ended = [info for event, info in events if event == TrainEvent.ENDED]
    assert ended == [{"state": "cancelled", "message": CANCELLED_MESSAGE}]
    assert TrainEvent.ERROR not in [e for e, _ in events]


def test_stop_asks_the_trainer_to_finish(logic, events, tmp_path, ct_volume, ct_labels, fake_python):
    workspace = tmp_path / "workspace"
    add_sample_case(workspace, ct_volume, ct_labels)
    logic.setWorkspace(workspace)
    process = logic.startTraining(python=fake_python)
    started_pids(workspace, logic)
    logic.stopTraining()  # the stand-in holds no trainer lock yet: it is sent SIGTERM, as the trainer handles
    assert process.wait(30) == 0 and process.state == "stopped"
    progress = logic.poll()
    assert progress.state == "stopped" and "SIGTERM" in progress.message
    assert [info["state"] for event, info in events if event == TrainEvent.ENDED] == ["stopped"]
    assert "fake trainer running" in process.outputTail()


# --------------------------------------------------------------------------- a real run


def test_real_training_run_is_followed_to_its_model_version(
    app, logic, events, tmp_path, ct_volume, ct_labels
):
    from pesf.models import build_model, save_checkpoint

    workspace = tmp_path / "workspace"
    add_sample_case(workspace, ct_volume, ct_labels)
    base = save_checkpoint(build_model("tiny", seed=0), tmp_path / "tiny.pt")
    settings = {
        "base_model": str(base),
        "trainable": "decoder",
        "click_iterations": 1,
        "augment": False,
        "device": "cpu",
    }
    write_json(tmp_path / "settings.json", settings)
    logic.setWorkspace(workspace)
    process = logic.startTraining(maxSteps=2, configFile=str(tmp_path / "settings.json"))
    assert process.command[1:4] == ["-m", "pesf.train", str(workspace)]
    deadline = time.monotonic() + RUN_TIMEOUT
    states = set()
    while logic.running and time.monotonic() < deadline:
        states.add(logic.poll().state)  # what the Widget's timer does, once a second
        time.sleep(0.5)
    assert process.wait(10) == 0, "\n".join(process.outputTail())
    progress = logic.poll()
    assert (progress.state, progress.step, progress.totalSteps, progress.fraction) == ("finished", 2, 2, 1.0)
    assert progress.modelVersion == "v1" and progress.loss is not None
    assert states <= {"idle", "starting", "running", "finished"}
    assert [info["state"] for event, info in events if event == TrainEvent.ENDED] == ["finished"]
    assert TrainEvent.ERROR not in [e for e, _ in events]
    assert logic.curves.lossTable.GetNumberOfRows() == 2
    assert logic.versionsTable.GetNumberOfRows() == 1 and logic.versionsTable.GetCellText(0, 1) == "2"
    assert any("step 2/2" in line for line in logic.newLogLines())
    # "Use this version": PESF Segment's shared setting now names it, and it loads
    logic.useVersion("v1")
    chosen = activeTrainedModel(app.scene)
    assert chosen == ModelChoice.trained(workspace / "models" / "v1" / "model.pt", "v1")
    assert logic.versionsTable.GetCellText(0, 5) == "\u2714"
    assert [info["version"] for event, info in events if event == TrainEvent.VERSION_USED] == ["v1"]
    model = chosen.loader()()
    assert model.config.name == "tiny" and model.trained
    with pytest.raises(ValueError, match="not in this workspace"):
        logic.useVersion("v9")
