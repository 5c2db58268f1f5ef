"""Shared pytest fixtures: paths to the bundled sample data, synthetic volumes, output folders.

Session-scoped volumes are read once; tests must not modify their arrays (use ``.with_array(...copy())``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pesf.io.volume import Volume
from pesf.resources import sample_data_dir

# --------------------------------------------------------------------------- sample data


@dataclass(frozen=True)
class SampleFiles:
    """Paths of the sample data files (see ``Resources/SampleData/README.md``)."""

    root: Path
    ct_image: Path  # A: abdominal CT slab, 122x101x30, int16, RAS-oriented header
    ct_label: Path  # A: TotalSegmentator "total" labels on the same grid
    ct_full_image: Path  # A: the whole CT, 122x101x112, int32
    mr_image: Path  # C: abdominal MR, 117x91x20, LPS-oriented header
    mr_label: Path  # C: TotalSegmentator "total_mr" labels
    dicom_dir: Path  # E: CT DICOM series folder, 3 files of 512x512
    dicom_liver_label: Path  # E: liver label map (NRRD) on the DICOM grid
    dicom_combined_label: Path  # E: liver=1, spine=2, heart=3 (NIfTI) on the DICOM grid
    pli_image: Path  # G: pelvic CT slab, 512x512x13, PLI orientation
    ts_total_labels: Path  # TotalSegmentator "total" {value: name}
    ts_total_mr_labels: Path  # TotalSegmentator "total_mr" {value: name}


@pytest.fixture(scope="session")
def samples() -> SampleFiles:
    """Paths of the sample data (part of the repository; a missing file is an error)."""
    root = sample_data_dir()
    files = SampleFiles(
        root=root,
        ct_image=root / "A_ts_ct" / "A_ct_sm_image.nii.gz",
        ct_label=root / "A_ts_ct" / "A_ct_sm_seg_total.nii.gz",
        ct_full_image=root / "A_ts_ct" / "A_ct_full_image.nii.gz",
        mr_image=root / "C_ts_mr" / "C_mr_image.nii.gz",
        mr_label=root / "C_ts_mr" / "C_mr_seg_total_mr.nii.gz",
        dicom_dir=root / "E_dcmqi_ct3slice" / "E_ct_dicom",
        dicom_liver_label=root / "E_dcmqi_ct3slice" / "E_liver_seg.nrrd",
        dicom_combined_label=root / "E_dcmqi_ct3slice" / "E_seg_combined.nii.gz",
        pli_image=root / "G_deeplesion_ct_unlabeled" / "G_DeepLesion_000015_01_01_slices103-115.nii.gz",
        ts_total_labels=root / "totalsegmentator_total_labels.json",
        ts_total_mr_labels=root / "totalsegmentator_total_mr_labels.json",
    )
    if not files.ct_image.is_file():
        pytest.fail(f"sample data not found in {root}")
    return files


@pytest.fixture(scope="session")
def ct_volume(samples: SampleFiles) -> Volume:
    """The sample CT slab (A), read once per session. Do not modify."""
    from pesf.io.image import read_volume

    return read_volume(samples.ct_image)


@pytest.fixture(scope="session")
def ct_labels(samples: SampleFiles, ct_volume: Volume) -> Volume:
    """The sample CT's TotalSegmentator label map (A), read once per session. Do not modify."""
    from pesf.io.labelmap import read_labelmap

    return read_labelmap(samples.ct_label, like=ct_volume)[0]


# --------------------------------------------------------------------------- synthetic volumes


def rotation_matrix(alpha_deg: float, beta_deg: float, gamma_deg: float) -> np.ndarray:
    """Rotation about z, then y, then x (degrees): a proper orthonormal 3x3 matrix."""
    a, b, c = np.deg2rad([alpha_deg, beta_deg, gamma_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rx @ ry @ rz


def make_oblique_volume(flipped: bool = False, dtype: type = np.int16) -> Volume:
    """A small volume with an oblique direction, anisotropic spacing and a non-zero origin.

    Args:
        flipped: make the direction improper (determinant -1), as for some scanners' axis orders.
        dtype: voxel type; voxel values are distinct, so axis mix-ups show.
    """
    shape = (23, 17, 11)
    direction = rotation_matrix(30.0, -20.0, 65.0)
    if flipped:
        direction = direction @ np.diag([1.0, -1.0, 1.0])
    array = (np.arange(np.prod(shape)).reshape(shape) % 3001 - 1000).astype(dtype)
    return Volume(array, origin=(-12.5, 40.25, 7.75), spacing=(0.7, 1.3, 2.9), direction=direction)


@pytest.fixture(scope="session")
def oblique_factory() -> Callable[..., Volume]:
    """The function :func:`make_oblique_volume`, for tests that need several variants."""
    return make_oblique_volume


@pytest.fixture(params=["proper", "flipped"])
def oblique_volume(request: pytest.FixtureRequest) -> Volume:
    """An oblique, anisotropic, offset int16 volume; parametrised with a proper and an improper direction."""
    return make_oblique_volume(flipped=request.param == "flipped")


# --------------------------------------------------------------------------- assertions


@pytest.fixture
def one_line_error() -> Callable[..., str]:
    """A function checking a caught PesfError: its message is one line holding every given word.

    Usage: ``with pytest.raises(PesfError) as excinfo: ...`` then ``one_line_error(excinfo, "word", ...)``.
    """

    def check(excinfo: pytest.ExceptionInfo[BaseException], *words: str) -> str:
        message = str(excinfo.value)
        assert "\n" not in message, message
        for word in words:
            assert word in message, message
        return message

    return check


# --------------------------------------------------------------------------- output folders


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An empty output folder for the test."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def leftover_files() -> Callable[[Path], list[str]]:
    """A function listing temporary files (``.*.tmp-*``) left in a folder by an atomic write."""

    def find(folder: Path) -> list[str]:
        return sorted(p.name for p in Path(folder).iterdir() if ".tmp-" in p.name)

    return find
