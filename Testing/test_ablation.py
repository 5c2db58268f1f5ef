"""Smoke test of the ablation harness (``Testing/Benchmarks/ablation.py``) on a reduced setup.

One accepted organ, one organ pseudo-labelled by a tiny random model, one degraded low-confidence copy of a
reference label and one held-out organ of the sample CT; two variants of 2 steps, 1 evaluation click. Checks
the JSON and the table, and that the variants really train on different plans: ``full`` drops the
low-confidence pseudo-label and ``no-filtering`` keeps it (read from each model version's ``card.json``).
"""

from __future__ import annotations

import json
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "Benchmarks"))
import ablation  # noqa: E402

ORGANS = ["--accepted", "liver=5", "--pseudo", "spleen=1", "--degraded", "kidney_left=3"]
ORGANS += ["--held-out", "urinary_bladder=21", "--external", "none"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[dict, str, Path]:
    """``(JSON report, printed output, workspace)`` of one in-process run with 2 steps and 2 variants."""
    root = tmp_path_factory.mktemp("ablation")
    out = root / "ablation.json"
    threads = torch.get_num_threads()
    args = ["--steps", "2", "--clicks", "1", "--train-clicks", "2", "--threads", "1", "--in-process"]
    args += ["--variants", "full,no-filtering", "--workspace", str(root / "ws"), "--out", str(out), *ORGANS]
    printed = StringIO()
    try:
        with redirect_stdout(printed):
            assert ablation.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text()), printed.getvalue(), root / "ws"


def test_report_structure(run):
    report, printed, _ = run
    assert report["format"] == "pesf-ablation"
    assert report["settings"]["variants"] == ["full", "no-filtering"]
    assert report["settings"]["training"]["steps"] == 2
    setup = report["setup"]
    assert setup["organs"]["held_out"] == {"urinary_bladder": 21}
    assert setup["pseudo_labels"]["spleen"]["kind"] == "model"
    degraded = setup["pseudo_labels"]["kidney_left"]
    assert degraded["kind"] == "degraded" and degraded["below_threshold"] is True
    assert degraded["confidence"] == pytest.approx(degraded["dice_vs_reference"], abs=1e-3)
    for variant in ("full", "no-filtering"):
        result = report["runs"][variant]["0"]
        dice = result["groups"]["A-held-out"]["organs"]["urinary_bladder"]["dice"]
        assert len(dice) == 1 and 0.0 <= dice[0] <= 1.0
        assert len(result["drawn"]) == 2 and result["train_s"] > 0
        summary = report["summary"][variant]
        assert len(summary["dice"]) == 1 and summary["delta_vs_baseline"] is None
        assert summary["plan_counts"]["train"] >= 1 and len(summary["drawn_difficulty_halves"]) == 2
    assert report["summary"]["full"]["delta_vs_full"] == [0.0]
    table = report["table"].splitlines()
    assert table[0].split()[:2] == ["variant", "Dice@1"]
    assert [line.split()[0] for line in table[2:]] == ["full", "no-filtering"]
    assert report["table"] in printed and "wrote" in printed


def test_variants_differ_in_their_plan(run):
    """``full`` drops the degraded (low-confidence) pseudo-label, ``no-filtering`` trains on it."""
    report, _, ws = run
    cards = {
        v: json.loads((ws / "runs" / f"{v}-s0" / "workspace" / "models" / "v1" / "card.json").read_text())
        for v in ("full", "no-filtering")
    }
    dropped = {v: {f"{i['case_id']}/{i['organ']}" for i in c["data"]["dropped"]} for v, c in cards.items()}
    train = {v: {f"{i['case_id']}/{i['organ']}" for i in c["data"]["train"]} for v, c in cards.items()}
    assert "A/kidney_left" in dropped["full"] and "A/kidney_left" not in train["full"]
    assert "A/kidney_left" in train["no-filtering"] and not dropped["no-filtering"]
    assert cards["full"]["settings"]["use_filtering"] is True
    assert cards["no-filtering"]["settings"]["use_filtering"] is False
    assert report["summary"]["full"]["dropped"] == ["A/kidney_left"]


def test_child_process(run):
    """A variant in its own process (how the harness runs by default): the baseline, no training."""
    report, _, ws = run
    spec = {
        "variant": "baseline",
        "seed": 0,
        "workspace": None,
        "settings": None,
        "base_model": report["settings"]["base_model"],
        "eval_groups": [g for g in report["setup"]["eval_groups"] if g["held_back"]],
        "clicks": 1,
        "threads": 1,
        "device": "cpu",
    }
    result = ablation._run_isolated(spec, ws / "runs" / "child", "baseline")
    assert result["train_s"] == 0.0 and "plan" not in result
    assert result["model"] == report["settings"]["base_model"]
    assert 0.0 <= result["groups"]["A-held-out"]["organs"]["urinary_bladder"]["dice"][0] <= 1.0
