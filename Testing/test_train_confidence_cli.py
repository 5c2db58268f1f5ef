"""``pesf train-confidence``: a model gains its confidence module and calibrated threshold."""

from __future__ import annotations

import numpy as np
import pytest

from pesf.cli import main
from pesf.interactive import InteractiveSession, SessionConfig
from pesf.io import read_volume
from pesf.models import build_model, load_model, model_info, save_checkpoint


@pytest.fixture()
def workspace(tmp_path, samples):
    ws = tmp_path / "ws"
    code = main(
        [
            "cases",
            "add",
            str(ws),
            str(samples.ct_image),
            str(samples.ct_label),
            "--organs",
            "liver=5,spleen=1",
            "--ignore-unnamed",
            "--case-id",
            "ct",
        ]
    )
    assert code == 0
    return ws


def test_train_confidence_writes_model_with_module(tmp_path, workspace, samples, capsys):
    base = tmp_path / "tiny.pt"
    save_checkpoint(build_model("tiny", seed=0), base)
    out = tmp_path / "with_conf.pt"
    code = main(
        [
            "--threads",
            "1",
            "train-confidence",
            str(workspace),
            "--model",
            str(base),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--regions-per-organ",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "Spearman" in printed and str(out) in printed
    model = load_model(out)
    info = model_info(model)
    assert info["has_confidence_module"]
    threshold = model.metadata["confidence"]["threshold"]
    assert 0.0 <= threshold <= 1.0
    session = InteractiveSession(model, read_volume(samples.ct_image), SessionConfig(confidence_runs=0))
    result = session.add_click("liver", np.array([60.0, 50.0, 15.0]))
    assert result.confidence_source == "confidence-module" and 0.0 <= result.confidence <= 1.0


def test_train_confidence_needs_accepted_organs(tmp_path, capsys):
    ws = tmp_path / "empty"
    main(["cases", "list", str(ws)])
    capsys.readouterr()
    code = main(["train-confidence", str(tmp_path), "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("pesf: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()
