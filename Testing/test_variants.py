"""A model's variants for other modalities and few-slice scans: the modality guess, and the session's swap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pesf.errors import PesfError
from pesf.interactive import InteractiveSession, SessionConfig
from pesf.io import read_volume
from pesf.io.volume import Volume
from pesf.models import build_model, guess_modality, load_model, model_for_image, save_checkpoint
from pesf.resources import models_dir, sample_data_dir


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.mark.parametrize(
    ("path", "modality"),
    [
        ("A_ts_ct/A_ct_full_image.nii.gz", "CT"),
        ("A_ts_ct/A_ct_sm_image.nii.gz", "CT"),
        ("E_dcmqi_ct3slice/E_ct_dicom", "CT"),
        ("G_deeplesion_ct_unlabeled/G_DeepLesion_000015_01_01_slices103-115.nii.gz", "CT"),
        ("C_ts_mr/C_mr_image.nii.gz", "MR"),
    ],
)
def test_the_sample_volumes_modality_is_guessed(path: str, modality: str):
    assert guess_modality(read_volume(sample_data_dir() / path).array) == modality


def test_modality_guess_reads_air_not_the_minimum():
    """A few negative voxels (MR ringing, a CT's padding in a corner) do not decide: air in HU does."""
    rng = np.random.default_rng(0)
    mr = rng.uniform(0, 800, size=(40, 40, 20))
    mr[:2, :2, :2] = -3000  # 80 voxels of 32,000
    assert guess_modality(mr) == "MR"
    ct = rng.uniform(-100, 300, size=(40, 40, 20))
    ct[:10] = -1000  # air around the body
    assert guess_modality(ct) == "CT"
    assert (
        guess_modality(ct - ct.min()) == "MR"
    )  # a CT stored without its HU rescale reads as MR (documented)
    with pytest.raises(PesfError, match="empty image"):
        guess_modality(np.zeros((0, 3, 3)))


@pytest.fixture
def paired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Bundled models ``pair`` (CT, naming ``pair-mr`` for MR) and ``pair-mr``, in a temporary Resources."""
    models = tmp_path / "Resources" / "Models"
    models.mkdir(parents=True)
    monkeypatch.setenv("PESF_RESOURCES", str(tmp_path / "Resources"))
    ct = save_checkpoint(
        build_model("tiny", seed=1),
        models / "pair.pt",
        metadata={"modality": "CT", "variants": {"MR": "pair-mr"}},
    )
    mr = save_checkpoint(build_model("tiny", seed=2), models / "pair-mr.pt", metadata={"modality": "MR"})
    return {"ct": ct, "mr": mr}


def _volume(modality: str) -> Volume:
    rng = np.random.default_rng(1)
    array = rng.uniform(0, 400, size=(48, 48, 24)).astype(np.float32)
    if modality == "CT":
        array[:, :8] = -1000.0
    return Volume(array, spacing=np.array([1.5, 1.5, 3.0]))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_a_session_uses_the_models_variant_for_the_images_modality(paired: dict[str, Path]):
    model = load_model("pair")
    mr_weights = load_model("pair-mr")
    on_mr = InteractiveSession(model, _volume("MR"))
    assert on_mr.model.metadata["modality"] == "MR" and "pair-mr" in on_mr.model.source
    assert on_mr.variant == "pair-mr"
    assert _same_weights(on_mr.model, mr_weights)
    on_mr.add_click("organ", (24, 24, 12))  # the variant segments
    assert on_mr.model is InteractiveSession(model, _volume("MR")).model  # loaded once, shared
    on_ct = InteractiveSession(model, _volume("CT"))
    assert on_ct.model is model and on_ct.variant is None
    kept = InteractiveSession(model, _volume("MR"), SessionConfig(match_modality=False))
    assert kept.model is model
    # a model meant for MR, or one that names no variant, is used as given
    assert model_for_image(mr_weights, _volume("MR").array) is mr_weights
    assert model_for_image(mr_weights, _volume("CT").array) is mr_weights
    plain = build_model("tiny", seed=3)
    assert model_for_image(plain, _volume("MR").array) is plain


def test_a_few_slice_scan_gets_the_few_slice_variant(paired: dict[str, Path]):
    """A key ``"CT few-slice"`` names the model for CT scans at most ``thin_scan_mm`` thick; thicker CTs keep
    the model and MR scans still get the MR variant; without the key a few-slice CT keeps the model."""
    models = paired["ct"].parent
    save_checkpoint(
        build_model("tiny", seed=5),
        models / "pair-thin.pt",
        metadata={"modality": "CT", "thin_scans": "extrude", "variants": {"MR": "pair-mr"}},
    )
    model = load_model("pair")
    model.metadata["variants"]["CT few-slice"] = "pair-thin"
    ct = _volume("CT")
    thin = Volume(ct.array[:, :, :3].copy(), spacing=np.array([1.5, 1.5, 3.0]))  # 9 mm
    on_thin = InteractiveSession(model, thin)
    assert on_thin.variant == "pair-thin" and on_thin._extrude == 2  # its metadata: read extruded
    on_thin.add_click("organ", (24, 24, 1))
    assert InteractiveSession(model, ct).model is model  # 72 mm: the model itself
    assert InteractiveSession(model, _volume("MR")).variant == "pair-mr"
    mr_thin = Volume(_volume("MR").array[:, :, :3].copy(), spacing=np.array([1.5, 1.5, 3.0]))
    assert InteractiveSession(model, mr_thin).variant == "pair-mr"  # no "MR few-slice": the MR variant
    assert InteractiveSession(load_model("pair"), thin).model.source == model.source  # no key: kept
    assert InteractiveSession(model, thin, SessionConfig(thin_scan_mm=5.0)).variant is None
    (models / "pair-thin.pt").unlink()
    with pytest.raises(PesfError, match=r"variant for few-slice CT images \(pair-thin\) cannot be loaded"):
        InteractiveSession(model, Volume(thin.array + 1, spacing=thin.spacing))


def test_a_missing_variant_is_a_clear_error(paired: dict[str, Path]):
    model = load_model("pair")
    paired["mr"].unlink()
    with pytest.raises(PesfError, match=r"variant for MR images \(pair-mr\) cannot be loaded"):
        InteractiveSession(model, _volume("MR"))
    assert InteractiveSession(model, _volume("CT")).model is model  # CT images still work


def test_a_replaced_variant_file_is_read_again(paired: dict[str, Path]):
    model = load_model("pair")
    first = model_for_image(model, _volume("MR").array)
    save_checkpoint(build_model("tiny", seed=4), paired["mr"], metadata={"modality": "MR"})
    second = model_for_image(model, _volume("MR").array)
    assert second is not first and not _same_weights(first, second)


def test_the_bundled_default_model_names_its_mr_and_few_slice_weights():
    """The bundled default is the CT model and names ``default-mr`` for MR images and ``default-thin`` for
    few-slice CT scans; all are bundled, each with its confidence module; the sample MR gets the MR weights,
    the three-slice CT E the few-slice weights (read extruded), the sample CTs the default itself."""
    default = load_model("default")
    assert default.metadata["modality"] == "CT"
    assert default.metadata["variants"] == {"MR": "default-mr", "CT few-slice": "default-thin"}
    mr, thin = load_model("default-mr"), load_model("default-thin")
    assert mr.metadata["modality"] == "MR"
    assert thin.metadata["modality"] == "CT" and thin.metadata["thin_scans"] == "extrude"
    assert all(m.confidence_module is not None for m in (default, mr, thin))
    assert not _same_weights(default, mr) and not _same_weights(default, thin)
    sample_mr = read_volume(sample_data_dir() / "C_ts_mr/C_mr_image.nii.gz")
    assert "default-mr" in InteractiveSession(default, sample_mr).model.source
    few = InteractiveSession(default, read_volume(sample_data_dir() / "E_dcmqi_ct3slice/E_ct_dicom"))
    assert few.variant == "default-thin" and few._extrude == 2
    sample_ct = read_volume(sample_data_dir() / "A_ts_ct/A_ct_sm_image.nii.gz")
    assert InteractiveSession(default, sample_ct).model is default
    # the bundled weights stay within their budget
    assert sum(p.stat().st_size for p in models_dir().glob("*.pt")) < 30 * 1024**2
