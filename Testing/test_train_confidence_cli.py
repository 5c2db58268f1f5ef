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
    aug = tmp_path / "aug.json"
    aug.write_text('{"remap_prob": 0.5}', encoding="utf-8")
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
            "2",
            "--augmentation",
            str(aug),
            "--modality",
            "CT",
            "--variant",
            "mr=default-mr",
            "--variant",
            "ct few-slice=thin.pt",
            "--model-version",
            "test-1",
            "--source",
            "a tiny test model",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "Spearman" in printed and str(out) in printed
    model = load_model(out)
    info = model_info(model)
    assert info["has_confidence_module"]
    threshold = model.metadata["confidence"]["threshold"]
    assert 0.0 <= threshold <= 1.0
    trained_on = model.metadata["confidence"]["trained_on"]
    assert trained_on["regions"] == 4 and trained_on["augmentation"]["remap_prob"] == 0.5
    assert model.metadata["modality"] == "CT"
    assert model.metadata["variants"] == {"MR": "default-mr", "CT few-slice": "thin.pt"}
    assert model.metadata["model_version"] == "test-1"
    assert model.metadata["source"] == "a tiny test model; confidence module trained on 4 regions"
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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"remap_prob": 0.5, "sharpen": 1}', "unknown augmentation setting(s) sharpen"),
        ('{"remap_prob": ', "is not valid JSON"),
        ("[0.5]", "must hold a JSON object"),
        (None, "not found"),
    ],
)
def test_train_confidence_refuses_a_bad_augmentation_file(tmp_path, workspace, capsys, text, message):
    aug = tmp_path / "aug.json"
    if text is not None:
        aug.write_text(text, encoding="utf-8")
    out = tmp_path / "m.pt"
    code = main(["train-confidence", str(workspace), "--out", str(out), "--augmentation", str(aug)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("pesf: error:") and len(err.strip().splitlines()) == 1
    assert message in err and str(aug) in err
    assert not out.exists()


@pytest.mark.parametrize("variant", ["MR", "PET=other.pt", "MR=", "CT thin=other.pt", "=other.pt"])
def test_train_confidence_refuses_a_bad_variant(tmp_path, workspace, capsys, variant):
    out = tmp_path / "m.pt"
    code = main(["train-confidence", str(workspace), "--out", str(out), "--variant", variant])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("pesf: error:") and len(err.strip().splitlines()) == 1
    assert "MODALITY=MODEL" in err and not out.exists()


def test_train_confidence_augmentation_file_sets_the_augmented_regions(tmp_path):
    from pesf.commands.confidence import _augmentation

    aug = tmp_path / "aug.json"
    aug.write_text('{"remap_prob": 0.5, "coverage_range": [3, 40]}', encoding="utf-8")
    config, overrides = _augmentation(str(aug), {"click_center_prob": 0.5})
    assert config.remap_prob == 0.5 and config.coverage_range == (3, 40) and config.click_center_prob == 0.5
    assert config.elastic_prob == type(config)().elastic_prob  # the rest keeps the training defaults
    assert overrides == {"click_center_prob": 0.5, "remap_prob": 0.5, "coverage_range": [3, 40]}
    default, none = _augmentation(None, {"click_center_prob": 0.5})
    assert default.remap_prob == 0.0 and none == {"click_center_prob": 0.5}
