"""The ``pesf`` command line end to end: segment, evaluate, info, and every kind of bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pesf.cli import build_parser, main
from pesf.io import read_labelmap, read_volume, save_markups, save_prompts
from pesf.models import build_model, save_checkpoint

ORGANS = {"liver": 5, "spleen": 1, "kidney_left": 3}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny model of the SAM-Med3D architecture with seeded random weights, in PESF's format."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(build_model("tiny", seed=0), path, metadata={"source": "test: random weights"})
    return path


@pytest.fixture(scope="module")
def ct(samples):
    image = read_volume(samples.ct_image)
    label, _ = read_labelmap(samples.ct_label, like=image)
    return samples.ct_image, samples.ct_label, image, label


def _organ_points(label) -> dict[str, np.ndarray]:
    from scipy import ndimage

    points = {}
    for name, value in ORGANS.items():
        dist = ndimage.distance_transform_edt(np.pad(label.array == value, 1))[1:-1, 1:-1, 1:-1]
        points[name] = np.array(np.unravel_index(int(np.argmax(dist)), dist.shape), dtype=float)
    return points


def _write_prompts(path: Path, image, label, space: str) -> Path:
    points = _organ_points(label)
    organs = []
    for name, ijk in points.items():
        pos = {"IJK": ijk, "LPS": image.index_to_lps(ijk), "RAS": image.index_to_lps(ijk) * [-1, -1, 1]}[
            space
        ]
        organs.append(
            {"name": name, "value": ORGANS[name], "points": [{"position": pos.tolist(), "positive": True}]}
        )
    path.write_text(json.dumps({"space": space, "organs": organs}))
    return path


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".seg.nrrd"])
def test_segment_writes_labelmap_on_input_grid(tmp_path, ct, tiny_model, capsys, ext):
    image_path, _, image, label = ct
    prompts = _write_prompts(tmp_path / "p.json", image, label, "IJK")
    out = tmp_path / f"organs{ext}"
    report = tmp_path / "report.json"
    code, stdout, stderr = _run(
        ["segment", image_path, "--points", prompts, "--out", out, "--model", tiny_model, "--report", report],
        capsys,
    )
    assert code == 0, stderr
    assert f"wrote {out}" in stdout
    written = sitk.ReadImage(str(out))
    src = sitk.ReadImage(str(image_path))
    assert written.GetSize() == src.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), src.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(written.GetDirection(), src.GetDirection(), atol=1e-6)
    rep = json.loads(report.read_text())
    assert set(rep["organs"]) == set(ORGANS)
    for name, entry in rep["organs"].items():
        assert entry["value"] == ORGANS[name]
        assert entry["voxels"] >= 0 and entry["volume_ml"] >= 0 and 0 <= entry["confidence"] <= 1
        assert {"preprocess_s", "encode_s", "decode_s", "paste_s", "total_s"} <= set(entry["clicks"][0])
    assert {"read_image_s", "load_model_s", "segment_s", "write_s"} <= set(rep["timings"])
    values = set(np.unique(sitk.GetArrayFromImage(written)).tolist())
    assert values <= {0, *ORGANS.values()}
    if ext == ".seg.nrrd":
        import slicerio

        seg = slicerio.read_segmentation(str(out))
        names = {s["name"] for s in seg["segments"]}
        assert set(ORGANS) <= names


def test_prompts_in_ijk_lps_ras_and_markups_give_the_same_mask(tmp_path, ct, tiny_model, capsys):
    image_path, _, image, label = ct
    masks = {}
    files = {
        space: _write_prompts(tmp_path / f"{space}.json", image, label, space)
        for space in ("IJK", "LPS", "RAS")
    }
    # the same organs as Slicer markups, one file per organ, in RAS
    from pesf.io import load_prompts

    organs = load_prompts(files["IJK"], image)
    for organ in organs:
        save_markups(tmp_path / f"{organ.name}.mrk.json", organ, image, coordinate_system="RAS")
    save_prompts(tmp_path / "saved.json", organs, image, space="LPS")
    files["saved-LPS"] = tmp_path / "saved.json"
    for name, prompts in files.items():
        out = tmp_path / f"{name}.nii.gz"
        code, _, stderr = _run(
            ["segment", image_path, "--points", prompts, "--out", out, "--model", tiny_model], capsys
        )
        assert code == 0, stderr
        masks[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, masks["IJK"], err_msg=name)
    assert np.count_nonzero(masks["IJK"]) > 0
    # one markups file, organ by organ, gives the same mask for that organ alone
    liver = tmp_path / "liver.mrk.json"
    code, _, stderr = _run(
        ["segment", image_path, "--points", liver, "--out", tmp_path / "l.nii.gz", "--model", tiny_model],
        capsys,
    )
    assert code == 0, stderr


def test_evaluate_report_structure_and_determinism(tmp_path, ct, tiny_model, capsys):
    image_path, label_path, _, _ = ct
    reports = []
    for run in range(2):
        out = tmp_path / f"eval{run}.json"
        code, stdout, stderr = _run(
            [
                "evaluate",
                image_path,
                label_path,
                "--organs",
                "liver=5,spleen=1",
                "--clicks",
                3,
                "--model",
                tiny_model,
                "--seed",
                7,
                "--out",
                out,
            ],
            capsys,
        )
        assert code == 0, stderr
        assert "liver" in stdout and "spleen" in stdout
        reports.append(json.loads(out.read_text()))
    rep = reports[0]
    assert set(rep["organs"]) == {"liver", "spleen"}
    for entry in rep["organs"].values():
        for key in ("dice", "nsd", "confidence", "latency_s"):
            assert len(entry[key]) == 3
            assert all(0 <= v <= 1 for v in entry[key]) or key == "latency_s"
    for name in rep["organs"]:
        assert reports[0]["organs"][name]["clicks"] == reports[1]["organs"][name]["clicks"]
        assert reports[0]["organs"][name]["dice"] == reports[1]["organs"][name]["dice"]
    # clicks are refined by default, from an organ's first click on
    assert rep["model"]["refine"]["free_mm"] > 0 and rep["model"]["refine"]["from_click"] == 1
    # --no-refine: the model alone, from the same first click
    out = tmp_path / "alone.json"
    args = ["evaluate", image_path, label_path, "--organs", "liver=5,spleen=1", "--clicks", 3]
    args += ["--model", tiny_model, "--seed", 7, "--no-refine", "--out", out]
    code, _, stderr = _run(args, capsys)
    assert code == 0, stderr
    alone = json.loads(out.read_text())
    assert alone["model"]["refine"] is None
    for name in rep["organs"]:
        assert alone["organs"][name]["clicks"][0] == rep["organs"][name]["clicks"][0]
    assert any(alone["organs"][n]["dice"][0] != rep["organs"][n]["dice"][0] for n in rep["organs"])


def test_info_describes_default_and_checkpoint(tiny_model, capsys):
    code, stdout, _ = _run(["info"], capsys)
    assert code == 0
    assert "untrained" in stdout or "trained" in stdout
    # the bundled model's confidence module on a line of its own, its Dice map counted, not listed
    line = next(x for x in stdout.splitlines() if x.startswith("confidence "))
    assert "threshold=0." in line and re.search(r"dice_map=\d+ knots", line) and "knots=[" not in stdout
    code, stdout, _ = _run(["info", "--model", tiny_model, "--json"], capsys)
    info = json.loads(stdout)
    assert info["name"] == "tiny" and info["parameters"]["total"] > 0
    assert {"image_encoder", "prompt_encoder", "mask_decoder"} <= set(info["parameters"])


def test_every_command_has_complete_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, sp in sub.choices.items():
        assert sp.description, name
        for action in sp._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.dest} has no help"


# ----------------------------------------------------------------------------------- bad input


def _liver_prompt(path: Path, position: list[int], positive: bool) -> Path:
    """A PESF prompt file with one liver point in voxel indices."""
    organ = {"name": "liver", "value": 5, "points": [{"position": position, "positive": positive}]}
    path.write_text(json.dumps({"space": "IJK", "organs": [organ]}))
    return path


def _bad_inputs(tmp: Path, samples, tiny_model: Path) -> dict[str, tuple[list, str]]:
    ct = samples.ct_image
    good = _liver_prompt(tmp / "good.json", [60, 50, 15], positive=True)
    flat = tmp / "flat.nii.gz"
    sitk.WriteImage(sitk.Image(8, 9, sitk.sitkInt16), str(flat))
    four = tmp / "four.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 4, 5, 6), np.float32), isVector=False), str(four))
    nan = tmp / "nan.nii.gz"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(ct))).astype(np.float32)
    arr[3, 4, 5] = np.nan
    nan_img = sitk.GetImageFromArray(arr)
    nan_img.CopyInformation(sitk.ReadImage(str(ct)))
    sitk.WriteImage(nan_img, str(nan))
    text = tmp / "notes.nii.gz"
    text.write_text("not an image")
    outside = _liver_prompt(tmp / "outside.json", [500, 50, 15], positive=True)
    negative_only = _liver_prompt(tmp / "neg.json", [60, 50, 15], positive=False)
    empty = tmp / "empty.json"
    empty.write_text("")
    malformed = tmp / "malformed.json"
    malformed.write_text('{"space": "IJK", "organs": [')
    other_arch = tmp / "sam2d.pth"
    torch.save(
        {"model_state_dict": {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}},
        other_arch,
    )
    truncated = tmp / "truncated.pt"
    truncated.write_bytes(tiny_model.read_bytes()[:5000])
    shifted = tmp / "shifted_label.nii.gz"
    lab = sitk.ReadImage(str(samples.ct_label))
    lab.SetOrigin(tuple(np.array(lab.GetOrigin()) + 10))
    sitk.WriteImage(lab, str(shifted))
    out = tmp / "out" / "labels.nii.gz"
    seg = ["segment"]
    return {
        "2D image": (seg + [flat, "--points", good, "--out", out.parent.parent / "o1.nii.gz"], "2D"),
        "4D image": (seg + [four, "--points", good, "--out", tmp / "o2.nii.gz"], "4D"),
        "missing image": (
            seg + [tmp / "nope.nii.gz", "--points", good, "--out", tmp / "o3.nii.gz"],
            "nope.nii.gz",
        ),
        "non-image file": (seg + [text, "--points", good, "--out", tmp / "o4.nii.gz"], "notes.nii.gz"),
        "NaN voxels": (seg + [nan, "--points", good, "--out", tmp / "o5.nii.gz"], "NaN"),
        "prompt outside": (seg + [ct, "--points", outside, "--out", tmp / "o6.nii.gz"], "outside"),
        "no positive point": (seg + [ct, "--points", negative_only, "--out", tmp / "o7.nii.gz"], "positive"),
        "empty prompt file": (seg + [ct, "--points", empty, "--out", tmp / "o8.nii.gz"], "empty"),
        "malformed prompt file": (
            seg + [ct, "--points", malformed, "--out", tmp / "o9.nii.gz"],
            "malformed.json",
        ),
        "other architecture": (
            seg + [ct, "--points", good, "--out", tmp / "o10.nii.gz", "--model", other_arch],
            "sam2d.pth",
        ),
        "truncated checkpoint": (
            seg + [ct, "--points", good, "--out", tmp / "o11.nii.gz", "--model", truncated],
            "truncated",
        ),
        "missing output folder": (
            seg + [ct, "--points", good, "--out", out, "--model", tiny_model],
            "does not exist",
        ),
        "label geometry differs": (
            [
                "evaluate",
                ct,
                shifted,
                "--organs",
                "liver=5",
                "--clicks",
                1,
                "--model",
                tiny_model,
                "--out",
                tmp / "e.json",
            ],
            "geometry",
        ),
        "unknown organ value": (
            [
                "evaluate",
                ct,
                samples.ct_label,
                "--organs",
                "liver=250",
                "--clicks",
                1,
                "--model",
                tiny_model,
                "--out",
                tmp / "e2.json",
            ],
            "250",
        ),
        "unknown model name": (["info", "--model", "no-such-model"], "no-such-model"),
    }


BAD_CASES = [
    "2D image",
    "4D image",
    "missing image",
    "non-image file",
    "NaN voxels",
    "prompt outside",
    "no positive point",
    "empty prompt file",
    "malformed prompt file",
    "other architecture",
    "truncated checkpoint",
    "missing output folder",
    "label geometry differs",
    "unknown organ value",
    "unknown model name",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gives_one_line_and_no_output(tmp_path, samples, tiny_model, capsys, case):
    argv, word = _bad_inputs(tmp_path, samples, tiny_model)[case]
    before = set(p.name for p in tmp_path.rglob("*"))
    code, stdout, stderr = _run(argv, capsys)
    assert code == 2, (case, stdout, stderr)
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("pesf: error: ") and word.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in stderr
    after = set(p.name for p in tmp_path.rglob("*"))
    assert after == before, f"files left behind: {after - before}"


def test_console_script_prints_no_traceback(tmp_path):
    """The installed `pesf` command itself: a missing image is one line on stderr and exit status 2."""
    exe = shutil.which("pesf") or str(Path(sys.executable).parent / "pesf")
    proc = subprocess.run(
        [
            exe,
            "segment",
            str(tmp_path / "missing.nii.gz"),
            "--points",
            "p.json",
            "--out",
            str(tmp_path / "o.nii.gz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("pesf: error:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.nii.gz").exists()


def test_scratch_model_spec(capsys):
    """``scratch:CONFIG[:SEED]`` names an untrained model to train from scratch (the default model's recipe)."""
    code, stdout, _ = _run(["info", "--model", "scratch:tiny:3", "--json"], capsys)
    info = json.loads(stdout)
    assert code == 0 and info["name"] == "tiny" and info["trained"] is False
    code, _, stderr = _run(["info", "--model", "scratch:huge"], capsys)
    assert code == 2 and stderr.startswith("pesf: error:") and "huge" in stderr
