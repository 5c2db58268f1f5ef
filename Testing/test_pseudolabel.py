"""Pseudo-labelling: automatic prompts on real organs and a C-shaped one, confident-region prompts, the
``pesf pseudo-label`` command on a store (accepted organs untouched, resumable, --redo, --images, an
interrupted folder run, torchrun sharding, refinement from the model), and every kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from ball_model import BallModel
from scipy import ndimage

import pesf.pseudolabel.cohort as cohort
from pesf.cli import main
from pesf.interactive import InteractiveSession, SessionConfig
from pesf.io import OrganPrompt, PromptPoint, Volume, read_labelmap, read_volume, write_labelmap, write_volume
from pesf.models import build_model, save_checkpoint
from pesf.pseudolabel import (
    auto_positive_count,
    prompts_from_confident_region,
    prompts_from_mask,
    prompts_from_points,
    pseudo_label_case,
)
from pesf.train.store import CaseStore, OrganRecord

CT_ORGANS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "stomach": 6, "aorta": 52}
#: The part of the sample CT the command tests run on: 180 x 180 x 90 mm around the liver and right kidney,
#: so one 192 mm region of the model covers it (fast on a CPU). It holds liver, kidney_right and aorta.
CROP = (slice(44, 104), slice(25, 85), slice(0, 30))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ct(samples) -> tuple[Volume, Volume]:
    image = read_volume(samples.ct_image)
    label, _ = read_labelmap(samples.ct_label, like=image)
    return image, label


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny SAM-Med3D-architecture model with seeded random weights, saved in PESF's format."""
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(build_model("tiny", seed=0), path, metadata={"source": "test: random weights"})
    return path


@pytest.fixture(scope="module")
def tiny_model_v2(tmp_path_factory) -> Path:
    """Another tiny model, carrying a model version (as the trainer's versions do)."""
    path = tmp_path_factory.mktemp("model2") / "tiny-v2.pt"
    save_checkpoint(build_model("tiny", seed=1), path, metadata={"model_version": "v2"})
    return path


@dataclass(frozen=True)
class Crop:
    image: Volume
    label: Volume
    image_path: Path
    label_path: Path


@pytest.fixture(scope="module")
def crop(ct, tmp_path_factory) -> Crop:
    """The cropped sample CT (see :data:`CROP`) and its label map, in memory and as files."""
    image, label = ct
    origin = image.index_to_lps(np.array([s.start for s in CROP], dtype=float))
    part = Volume(image.array[CROP].copy(), origin, image.spacing, image.direction)
    part_label = part.with_array(label.array[CROP].copy())
    folder = tmp_path_factory.mktemp("crop")
    return Crop(
        part,
        part_label,
        write_volume(part, folder / "ct.nii.gz"),
        write_labelmap(part_label, folder / "ct_label.nii.gz"),
    )


def _workspace(tmp_path: Path, crop: Crop) -> Path:
    """A workspace with one case, ``ct1`` (the cropped CT), whose aorta is accepted."""
    ws = tmp_path / "ws"
    store = CaseStore(ws, create=True)
    aorta = crop.image.with_array(np.where(crop.label.array == 52, 52, 0).astype(np.uint8))
    store.add_case(crop.image, aorta, [OrganRecord("aorta", 52, "accepted", author="dr")], case_id="ct1")
    return ws


@pytest.fixture
def halves(tmp_path, crop) -> tuple[Path, Path]:
    """Two images (slices 0-15 and 14-29 of the cropped CT) and their label maps, as folders ``images/``
    and ``labels/`` with matching file names."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name, k0, k1 in (("ct_a", 0, 16), ("ct_b", 14, 30)):
        origin = crop.image.index_to_lps(np.array([0.0, 0.0, k0]))
        part = Volume(crop.image.array[:, :, k0:k1].copy(), origin, crop.image.spacing, crop.image.direction)
        part_label = part.with_array(crop.label.array[:, :, k0:k1].copy())
        assert np.any(part_label.array == 5), name
        write_volume(part, images / f"{name}.nii.gz")
        write_labelmap(part_label, labels / f"{name}.nii.gz")
    return images, labels


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _case_json(ws: Path, case_id: str) -> dict:
    return json.loads((ws / "cases" / case_id / "case.json").read_text())


# --------------------------------------------------------------------------- automatic prompts


@pytest.mark.parametrize("name", list(CT_ORGANS))
@pytest.mark.parametrize("n_positive", [1, 3, None])
def test_prompts_from_mask_lie_inside_the_organ(ct, name, n_positive):
    image, label = ct
    mask = label.array == CT_ORGANS[name]
    clicks = prompts_from_mask(mask, image.spacing, n_positive=n_positive, n_negative=2)
    positives = [ijk for ijk, pos in clicks if pos]
    negatives = [ijk for ijk, pos in clicks if not pos]
    assert [pos for _, pos in clicks] == [True] * len(positives) + [False] * len(negatives)
    expected = auto_positive_count(mask, image.spacing) if n_positive is None else n_positive
    assert len(positives) == expected and len(negatives) == 2
    outside_mm = ndimage.distance_transform_edt(~mask, sampling=image.spacing)
    inside_mm = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=image.spacing)[1:-1, 1:-1, 1:-1]
    for ijk in positives:
        idx = tuple(int(v) for v in ijk)
        assert np.array_equal(ijk, np.round(ijk)) and mask[idx], (name, ijk)
    if len(positives) == 1:  # one click: the organ's most interior voxel
        assert inside_mm[tuple(int(v) for v in positives[0])] == pytest.approx(inside_mm.max())
    depth = [inside_mm[tuple(int(v) for v in ijk)] for ijk in positives]
    assert depth == sorted(depth, reverse=True)  # the most interior first
    if len(positives) > 1:  # spread over the organ, not stacked
        gaps = [
            np.linalg.norm((a - b) * image.spacing)
            for i, a in enumerate(positives)
            for b in positives[i + 1 :]
        ]
        assert min(gaps) > 10.0
    for ijk in negatives:  # just outside: 5 mm from the boundary, within one voxel
        d = outside_mm[tuple(int(v) for v in ijk)]
        assert 5.0 <= d < 5.0 + image.spacing.max() + 1e-6, (name, d)


def _c_shape() -> np.ndarray:
    """A thick C (an arc of 300 degrees) in a 60x60x10 grid: its centre of mass lies outside it."""
    i, j = np.meshgrid(np.arange(60), np.arange(60), indexing="ij")
    r = np.hypot(i - 30, j - 30)
    angle = np.degrees(np.arctan2(j - 30, i - 30)) % 360
    ring = (r >= 15) & (r <= 24) & ((angle > 30) & (angle < 330))
    mask = np.zeros((60, 60, 10), bool)
    mask[:, :, 2:8] = ring[:, :, None]
    return mask


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 3.0)])
def test_prompts_on_a_c_shaped_organ_stay_inside_and_spread(spacing):
    mask = _c_shape()
    com = np.round(ndimage.center_of_mass(mask)).astype(int)
    assert not mask[tuple(com)]  # the naive choice would miss the organ
    clicks = prompts_from_mask(mask, spacing, n_positive=3, n_negative=3)
    positives = [ijk for ijk, pos in clicks if pos]
    assert all(mask[tuple(int(v) for v in ijk)] for ijk in positives)
    assert len(positives) == 3
    gaps = [np.linalg.norm((a - b) * spacing) for i, a in enumerate(positives) for b in positives[i + 1 :]]
    assert min(gaps) > 10.0  # spread along the organ, more than its thickness apart
    assert all(not mask[tuple(int(v) for v in ijk)] for ijk, pos in clicks if not pos)
    # a stray island is never prompted: only the largest component is
    with_island = mask.copy()
    with_island[2:4, 2:4, 4:6] = True
    assert all(not (ijk[0] < 5 and ijk[1] < 5) for ijk, _ in prompts_from_mask(with_island, spacing, 3, 3))


def test_prompts_on_a_flat_organ_and_a_few_slice_scan_sit_in_the_middle_of_its_section():
    # A 40 x 30 mm section 10 mm thick: the deepest voxels (5 mm) fill most of its middle layer; the click is
    # their centre, not the first of them in index order (a corner of the section).
    flat = np.zeros((60, 50, 20), bool)
    flat[10:50, 10:40, 5:15] = True
    ((ijk, _),) = prompts_from_mask(flat, (1.0, 1.0, 1.0), n_negative=0)
    assert abs(ijk[0] - 29.5) <= 1 and abs(ijk[1] - 24.5) <= 1
    # The same section on a scan of three 1 mm slices: the scan's edge bounds every depth at 2 mm; the depth
    # with that edge open finds the section's middle, on the middle slice.
    thin = np.zeros((60, 50, 3), bool)
    thin[10:50, 10:40, :] = True
    ((ijk, _),) = prompts_from_mask(thin, (1.0, 1.0, 1.0), n_negative=0)
    assert ijk[2] == 1 and abs(ijk[0] - 29.5) <= 1 and abs(ijk[1] - 24.5) <= 1
    # Three clicks: one per slab along the longest axis, each in its slab's middle, the middle slab's first.
    clicks = [ijk for ijk, _ in prompts_from_mask(thin, (1.0, 1.0, 1.0), n_positive=3, n_negative=0)]
    assert all(c[2] == 1 and abs(c[1] - 24.5) <= 1 for c in clicks)
    others = sorted(c[0] for c in clicks[1:])
    assert abs(clicks[0][0] - 29.5) <= 1 and others[0] < 23 and others[1] > 36


def test_prompts_follow_the_spacing_in_mm():
    """Two joined boxes at spacing (2, 2, 1) mm: A is thicker in voxels (8^3), B in millimetres (6x6x24
    voxels, 12x12x24 mm). The click goes into B, the most interior in mm; on a 1 mm grid into A."""
    mask = np.zeros((22, 12, 30), bool)
    mask[2:10, 2:10, 2:10] = True  # A
    mask[12:18, 2:8, 2:26] = True  # B
    mask[10:12, 4:6, 4:6] = True  # the bridge
    ((ijk, positive),) = prompts_from_mask(mask, (2.0, 2.0, 1.0))
    assert positive and 12 <= ijk[0] < 18
    ((ijk, _),) = prompts_from_mask(mask, (1.0, 1.0, 1.0))
    assert 2 <= ijk[0] < 10
    assert prompts_from_mask(np.zeros((5, 5, 5), bool), (1, 1, 1)) == []


def test_confident_region_prompts_respect_the_threshold(ct):
    image, label = ct
    liver = label.array == 5
    confidence = np.full(image.shape, 0.5, np.float32)
    confident_half = liver.copy()
    confident_half[: image.shape[0] // 2] = False  # only the half with large i is confident
    assert confident_half.any() and (liver & ~confident_half).any()
    confidence[confident_half] = 0.95
    probability = liver.astype(np.float32) * 0.8
    clicks = prompts_from_confident_region(
        probability, confidence, image.spacing, threshold=0.9, n_positive=2
    )
    assert len(clicks) == 2
    assert all(confident_half[tuple(int(v) for v in ijk)] for ijk, _ in clicks)
    # a lower threshold lets the whole organ prompt; a higher one none of it
    low = prompts_from_confident_region(liver, confidence, image.spacing, threshold=0.4)
    whole = prompts_from_mask(liver, image.spacing)
    assert len(low) == len(whole) == 1 and np.array_equal(low[0][0], whole[0][0])
    assert prompts_from_confident_region(liver, confidence, image.spacing, threshold=0.99) == []
    # negatives sit outside the whole prediction, not just outside its confident part
    clicks = prompts_from_confident_region(liver, confidence, image.spacing, threshold=0.9, n_negative=3)
    assert all(not liver[tuple(int(v) for v in ijk)] for ijk, pos in clicks if not pos)


def test_prompts_from_points_keep_order_and_sign():
    organ = OrganPrompt(
        "liver", 5, [PromptPoint((1, 2, 3)), PromptPoint((4.5, 5, 6), False), PromptPoint((7, 8, 9))]
    )
    clicks = prompts_from_points(organ)
    assert [pos for _, pos in clicks] == [True, False, True]
    assert np.allclose(clicks[1][0], [4.5, 5, 6])


@pytest.mark.parametrize("name", ["liver", "spleen", "kidney_right", "kidney_left", "stomach"])
def test_ball_model_prompted_automatically_lands_inside_the_organ(ct, name):
    """Independent of a trained model: the ball drawn around each automatic click lies inside the organ (the
    ball as the model draws it: no refinement by the image)."""
    image, label = ct
    mask = label.array == CT_ORGANS[name]
    session = InteractiveSession(BallModel(radius=4), image, SessionConfig(confidence_runs=0, refine=None))
    result = None
    for ijk, positive in prompts_from_mask(mask, image.spacing, n_positive=None):
        result = session.add_click(name, ijk, positive)
    predicted = result.full_mask()
    assert predicted.sum() > 20
    precision = (predicted & mask).sum() / predicted.sum()
    assert precision > 0.9, (name, precision)


def test_pseudo_label_case_with_the_ball_model_pastes_into_the_store(tmp_path, crop):
    """The stored pseudo mask is the session's ball, at the right place; accepted voxels are kept."""
    label = crop.label
    store = CaseStore(_workspace(tmp_path, crop))
    report = pseudo_label_case(
        store,
        "ct1",
        {"liver": 5, "aorta": 52, "kidney_right": 2},
        BallModel(radius=6),
        source_label=label,
        n_positive=1,
        session_config=SessionConfig(confidence_runs=2, refine=None),  # the ball as the model draws it
    )
    assert report["organs"]["aorta"]["status"] == "skipped"
    assert {report["organs"][n]["status"] for n in ("liver", "kidney_right")} == {"pseudo"}
    stored = store.load_label("ct1").array
    for name in ("liver", "kidney_right"):
        organ = stored == CT_ORGANS[name]
        assert organ.sum() == report["organs"][name]["voxels"] > 50
        assert (organ & (label.array == CT_ORGANS[name])).sum() / organ.sum() > 0.95
    assert np.array_equal(stored == 52, label.array == 52)  # the accepted aorta, voxel for voxel
    record = store.get("ct1").organs["liver"]
    assert (
        record.status == "pseudo" and record.source == "automatic" and record.author == "pesf-model BallModel"
    )


# --------------------------------------------------------------------------- the command on a store


def test_pseudo_label_writes_pseudo_records_and_keeps_accepted(tmp_path, crop, tiny_model, capsys):
    ws = _workspace(tmp_path, crop)
    before = CaseStore(ws).load_label("ct1").array.copy()
    aorta_before = _case_json(ws, "ct1")["organs"]["aorta"]
    report_path = tmp_path / "report.json"
    argv = ["pseudo-label", ws, "--case", "ct1", "--organs", "liver=5,aorta=52,kidney_right=2"]
    argv += ["--from-label", crop.label_path, "--model", tiny_model, "--report", report_path]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "liver" in out and ("kept" in out or "below threshold" in out)
    assert f"wrote {report_path}" in out
    case = _case_json(ws, "ct1")
    assert case["revision"] == 2 and case["label_file"] == "label-2.nii.gz"
    assert case["organs"]["aorta"] == aorta_before  # the accepted organ's record is untouched
    for name in ("liver", "kidney_right"):
        rec = case["organs"][name]
        assert rec["status"] == "pseudo" and rec["source"] == "automatic" and rec["n_clicks"] >= 1
        assert 0.0 <= rec["confidence"] <= 1.0 and rec["author"] == "pesf-model tiny"
    after = CaseStore(ws).load_label("ct1").array
    assert np.array_equal(after == 52, before == 52)  # and so are its voxels
    report = json.loads(report_path.read_text())
    organs = report["cases"][0]["organs"]
    assert list(organs) == ["liver", "aorta", "kidney_right"]
    assert organs["aorta"]["status"] == "skipped" and "accepted" in organs["aorta"]["reason"]
    for name in ("liver", "kidney_right"):
        entry = organs[name]
        assert entry["status"] == "pseudo" and entry["voxels"] == int((after == CT_ORGANS[name]).sum())
        assert entry["ml"] == pytest.approx(entry["voxels"] * 27 / 1000, abs=1e-3)
        assert entry["confidence"] == pytest.approx(case["organs"][name]["confidence"], abs=1e-4)
        assert entry["below_threshold"] == (entry["confidence"] < report["threshold"])

    # a threshold above every confidence: still stored as pseudo, but reported below it
    argv[argv.index("--organs") + 1] = "kidney_right=2"
    code, out, err = _run(argv + ["--redo", "--threshold", "1.0"], capsys)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["summary"]["below_threshold"] == ["ct1/kidney_right"] and report["threshold"] == 1.0
    assert "below threshold 1.00" in out
    assert _case_json(ws, "ct1")["organs"]["kidney_right"]["status"] == "pseudo"


def test_rerun_is_resumable_and_redo_redoes(tmp_path, crop, tiny_model, capsys):
    ws = _workspace(tmp_path, crop)
    base = ["pseudo-label", ws, "--case", "ct1", "--from-label", crop.label_path, "--model", tiny_model]
    base += ["--report", tmp_path / "r.json"]

    def statuses() -> dict[str, str]:
        report = json.loads((tmp_path / "r.json").read_text())
        return {n: e["status"] for n, e in report["cases"][0]["organs"].items()}

    assert _run(base + ["--organs", "kidney_right=2"], capsys)[0] == 0
    first = _case_json(ws, "ct1")
    code, out, _ = _run(base + ["--organs", "kidney_right=2"], capsys)  # nothing left to do
    assert code == 0 and "already pseudo-labelled; use --redo" in out
    assert _case_json(ws, "ct1") == first and statuses() == {"kidney_right": "skipped"}
    # one more organ in the list: only that one is done
    assert _run(base + ["--organs", "kidney_right=2,liver=5"], capsys)[0] == 0
    case = _case_json(ws, "ct1")
    assert statuses() == {"kidney_right": "skipped", "liver": "pseudo"}
    assert case["organs"]["kidney_right"] == first["organs"]["kidney_right"]
    assert case["organs"]["liver"]["status"] == "pseudo" and case["revision"] == first["revision"] + 1
    # --redo does it again
    assert _run(base + ["--organs", "kidney_right=2", "--redo"], capsys)[0] == 0
    assert statuses() == {"kidney_right": "pseudo"}
    assert _case_json(ws, "ct1")["organs"]["liver"] == case["organs"]["liver"]


def test_points_give_clicks_records(tmp_path, crop, tiny_model, capsys):
    ws = _workspace(tmp_path, crop)
    ijk = prompts_from_mask(crop.label.array == 2, crop.image.spacing)[0][0]
    prompts = tmp_path / "p.json"
    organ = {"name": "kidney_right", "value": 2, "points": [{"position": ijk.tolist()}]}
    prompts.write_text(json.dumps({"space": "IJK", "organs": [organ]}))
    code, out, err = _run(
        ["pseudo-label", ws, "--case", "ct1", "--points", prompts, "--model", tiny_model], capsys
    )
    assert code == 0, err
    rec = _case_json(ws, "ct1")["organs"]["kidney_right"]
    assert rec["status"] == "pseudo" and rec["source"] == "clicks" and rec["n_clicks"] == 1
    assert f"wrote {ws / 'reports'}" in out  # the default report location


def test_from_model_refines_earlier_pseudo_labels(tmp_path, crop, tiny_model, tiny_model_v2, capsys):
    ws = _workspace(tmp_path, crop)
    base = ["pseudo-label", ws, "--case", "ct1", "--report", tmp_path / "r.json"]
    first = ["--organs", "kidney_right=2", "--from-label", crop.label_path, "--model", tiny_model]
    assert _run(base + first, capsys)[0] == 0
    # liver has no earlier pseudo-label and no label map to fall back on: reported as failed, not stored
    refine = base + ["--organs", "kidney_right=2,liver=5", "--from-model", "--model", tiny_model_v2]
    code, out, err = _run(refine, capsys)
    assert code == 0, err
    organs = json.loads((tmp_path / "r.json").read_text())["cases"][0]["organs"]
    assert organs["kidney_right"]["prompts"] == "model" and organs["kidney_right"]["status"] == "pseudo"
    assert organs["kidney_right"]["refined_from"] == {"author": "pesf-model tiny", "model_version": None}
    assert organs["liver"]["status"] == "failed" and "no earlier pseudo-label" in organs["liver"]["reason"]
    case = _case_json(ws, "ct1")
    assert case["organs"]["kidney_right"]["model_version"] == "v2"
    assert case["organs"]["kidney_right"]["author"] == "pesf-model tiny v2"
    assert "liver" not in case["organs"]
    # made by this very model already: skipped unless --redo
    code, out, _ = _run(
        base + ["--organs", "kidney_right=2", "--from-model", "--model", tiny_model_v2], capsys
    )
    assert code == 0 and "already pseudo-labelled by this model" in out
    assert _case_json(ws, "ct1")["revision"] == case["revision"]


# --------------------------------------------------------------------------- folders, interruption, torchrun


def _folder_argv(ws: Path, halves: tuple[Path, Path], model: Path, report: Path) -> list:
    images, labels = halves
    return ["pseudo-label", ws, "--images", images, "--organs", "liver=5", "--from-label", labels] + [
        "--model",
        model,
        "--report",
        report,
        "--positive",
        "1",
    ]


def test_images_folder_creates_a_case_per_image(tmp_path, halves, tiny_model, capsys):
    ws = tmp_path / "ws"
    CaseStore(ws, create=True)
    code, out, err = _run(_folder_argv(ws, halves, tiny_model, tmp_path / "r.json"), capsys)
    assert code == 0, err
    store = CaseStore(ws)
    assert store.case_ids() == ["ct_a", "ct_b"]
    for cid in ("ct_a", "ct_b"):
        record = store.get(cid)
        assert {n: r.status for n, r in record.organs.items()} == {"liver": "pseudo"}
        assert record.grid["shape"] == [60, 60, 16]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["cases_written"] == 2 and report["summary"]["organs_written"] == 2


def test_interrupted_folder_run_resumes_with_the_missing_case(
    tmp_path, halves, tiny_model, capsys, monkeypatch
):
    ws = tmp_path / "ws"
    CaseStore(ws, create=True)
    argv = _folder_argv(ws, halves, tiny_model, tmp_path / "r.json")
    real = cohort.pseudo_label_case
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cohort, "pseudo_label_case", interrupted)
    code, _, err = _run(argv, capsys)
    assert code == 130 and "interrupted" in err
    store = CaseStore(ws)
    assert {n: r.status for n, r in store.get("ct_a").organs.items()} == {"liver": "pseudo"}
    assert store.get("ct_b").organs == {}  # imported, not labelled
    done_a = _case_json(ws, "ct_a")

    monkeypatch.setattr(cohort, "pseudo_label_case", real)
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    assert _case_json(ws, "ct_a") == done_a  # not redone
    assert {n: r.status for n, r in store.get("ct_b").organs.items()} == {"liver": "pseudo"}
    report = json.loads((tmp_path / "r.json").read_text())
    statuses = {c["case_id"]: {e["status"] for e in c["organs"].values()} for c in report["cases"]}
    assert statuses == {"ct_a": {"skipped"}, "ct_b": {"pseudo"}}


def test_a_bad_case_in_a_folder_run_leaves_the_others_written(tmp_path, halves, crop, tiny_model, capsys):
    images, labels = halves
    other = crop.label.with_array(crop.label.array)  # the whole crop: not the grid of ct_b
    write_labelmap(other, labels / "ct_b.nii.gz")
    ws = tmp_path / "ws"
    CaseStore(ws, create=True)
    code, out, err = _run(_folder_argv(ws, halves, tiny_model, tmp_path / "r.json"), capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "1 of 2 cases failed" in lines[0] and "ct_b" in lines[0], err
    assert "geometry differs" in lines[0]
    store = CaseStore(ws)
    assert store.case_ids() == ["ct_a"]  # ct_b was not even imported
    assert store.get("ct_a").organs["liver"].status == "pseudo"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["cases_failed"] == ["ct_b"] and "error: " in out


def test_python_dash_m_pesf_runs_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "pesf", "--version"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.startswith("pesf ")


@pytest.mark.slow
def test_torchrun_shards_the_images_across_two_ranks(tmp_path, halves, tiny_model):
    ws = tmp_path / "ws"
    CaseStore(ws, create=True)
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "pesf", "--threads", "1"]
    cmd += [str(a) for a in _folder_argv(ws, halves, tiny_model, tmp_path / "r.json")] + ["--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["world_size"] == 2
    assert {c["case_id"]: c["rank"] for c in report["cases"]} == {"ct_a": 0, "ct_b": 1}  # r takes r, r + 2...
    assert all(c["written"] for c in report["cases"])
    assert out.stdout.count("wrote ") == 1  # rank 0 alone prints the table and writes the report
    store = CaseStore(ws)
    assert [store.get(cid).organs["liver"].status for cid in ("ct_a", "ct_b")] == ["pseudo", "pseudo"]


# --------------------------------------------------------------------------- bad input


def _other_grid_label(tmp_path: Path, crop: Crop) -> Path:
    label = crop.label
    other = Volume(label.array, label.origin, label.spacing * 1.5, label.direction)
    return write_labelmap(other, tmp_path / "other_grid.nii.gz")


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing workspace", ["does not exist"]),
        ("unknown case", ["'nope'", "not in workspace"]),
        ("absent value", ["spleen=1", "absent from the source label map"]),
        ("label geometry", ["geometry differs"]),
        ("no prompt source", ["no prompt source"]),
        ("no organs", ["no organs given"]),
        ("one label for two cases", ["one file but 2 cases"]),
        ("bad threshold", ["--threshold"]),
        ("missing label folder entry", ["no label map named like case", "ct2"]),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, crop, tiny_model, capsys, case, words):
    ws = _workspace(tmp_path, crop)
    CaseStore(ws).add_case(
        crop.image, crop.image.with_array(np.zeros(crop.image.shape, np.uint8)), {}, case_id="ct2"
    )
    snapshot = {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()}
    labels = tmp_path / "labels"
    labels.mkdir()
    write_labelmap(crop.label, labels / "ct1.nii.gz")
    good = ["--organs", "liver=5", "--from-label", crop.label_path, "--model", tiny_model]
    argv = {
        "missing workspace": [tmp_path / "nowhere", "--case", "ct1", *good],
        "unknown case": [ws, "--case", "nope", *good],
        "absent value": [ws, "--case", "ct1", "--organs", "liver=5,spleen=1", *good[2:]],
        "label geometry": [
            ws,
            "--case",
            "ct1",
            *good[:2],
            "--from-label",
            _other_grid_label(tmp_path, crop),
            *good[4:],
        ],
        "no prompt source": [ws, "--case", "ct1", "--organs", "liver=5", "--model", tiny_model],
        "no organs": [ws, "--case", "ct1", *good[2:]],
        "one label for two cases": [ws, "--all", *good],
        "bad threshold": [ws, "--case", "ct1", *good, "--threshold", "1.5"],
        "missing label folder entry": [ws, "--all", *good[:2], "--from-label", labels, *good[4:]],
    }[case]
    code, out, err = _run(["pseudo-label", *argv], capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pesf: error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()} == snapshot
    assert not (tmp_path / "nowhere").exists()
