"""Tests of pesf.io: volumes, label maps, Slicer segmentations, the organ table and atomic writes.

Geometry round trips run on the real sample data (CT, DICOM series, PLI-oriented CT) and on a synthetic
oblique volume; every bad input must give a one-line PesfError and leave no file behind.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from pesf.errors import PesfError
from pesf.io.atomic import atomic_path, atomic_write, split_extension, write_json_atomic
from pesf.io.image import as_float32, read_volume, sitk_to_volume, volume_to_sitk, write_volume
from pesf.io.labelmap import read_labelmap, write_labelmap
from pesf.io.labels import (
    SegmentInfo,
    default_segment_info,
    organ_color,
    organ_info,
    organ_table,
    parse_organs_arg,
    segments_from_names,
    terminology_from_string,
    terminology_to_string,
    totalsegmentator_label_names,
)
from pesf.io.volume import Volume

IMAGE_EXTENSIONS = [".nii.gz", ".nii", ".nrrd", ".mha"]
LABEL_EXTENSIONS = [".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"]


def assert_same_geometry(a: Volume, b: Volume, atol: float = 1e-5) -> None:
    """Shape, spacing, direction and origin equal within ``atol`` (NIfTI stores geometry as float32)."""
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol * max(1.0, float(np.abs(a.origin).max())))


@pytest.fixture(params=["ct", "pli", "oblique", "oblique_flipped"])
def any_volume(request: pytest.FixtureRequest, samples, ct_volume: Volume, oblique_factory) -> Volume:
    """Real and synthetic volumes with different orientations."""
    if request.param == "ct":
        return ct_volume
    if request.param == "pli":
        return read_volume(samples.pli_image)
    return oblique_factory(flipped=request.param == "oblique_flipped")


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("ext", IMAGE_EXTENSIONS)
def test_image_round_trip_keeps_geometry_values_and_dtype(
    any_volume: Volume, ext: str, out_dir: Path
) -> None:
    path = write_volume(any_volume, out_dir / f"image{ext}")
    back = read_volume(path)
    assert_same_geometry(back, any_volume)
    assert back.array.dtype == any_volume.array.dtype
    np.testing.assert_array_equal(back.array, any_volume.array)
    assert sorted(p.name for p in out_dir.iterdir()) == [path.name]


def test_nibabel_reads_our_nifti_with_the_volume_ras_affine_and_ijk_order(
    any_volume: Volume, out_dir: Path
) -> None:
    path = write_volume(any_volume, out_dir / "image.nii.gz")
    nifti = nib.load(path)
    np.testing.assert_allclose(nifti.affine, any_volume.ijk_to_ras, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), any_volume.array)


def test_sample_ct_matches_nibabel(samples, ct_volume: Volume) -> None:
    nifti = nib.load(samples.ct_image)
    np.testing.assert_allclose(ct_volume.ijk_to_ras, nifti.affine, atol=1e-4)
    np.testing.assert_array_equal(ct_volume.array, np.asarray(nifti.dataobj))
    assert ct_volume.array.dtype == np.int16


def test_pli_image_orientation(samples) -> None:
    volume = read_volume(samples.pli_image)
    assert volume.shape == (512, 512, 13)
    # i runs posterior, j left, k inferior (PLI): LPS axis directions are +P, +L, -S.
    np.testing.assert_allclose(volume.direction, [[0, 1, 0], [1, 0, 0], [0, 0, -1]], atol=1e-6)
    np.testing.assert_allclose(nib.load(samples.pli_image).affine, volume.ijk_to_ras, atol=1e-4)
    ijk = np.array([10.0, 20.0, 3.0])
    np.testing.assert_allclose(volume.lps_to_index(volume.index_to_lps(ijk)), ijk, atol=1e-9)


def test_mr_lps_image_reads(samples) -> None:
    volume = read_volume(samples.mr_image)
    labels, segments = read_labelmap(samples.mr_label, like=volume)
    assert segments is None and labels.array.dtype == np.uint8 and int(labels.array.max()) == 49


def test_dicom_series_folder_file_and_nifti_copy_agree(samples, out_dir: Path) -> None:
    series = read_volume(samples.dicom_dir)
    assert series.shape == (512, 512, 3)
    one_file = read_volume(samples.dicom_dir / "02.dcm")
    assert_same_geometry(one_file, series, atol=1e-9)
    np.testing.assert_array_equal(one_file.array, series.array)
    back = read_volume(write_volume(series, out_dir / "ct.nii.gz"))
    assert_same_geometry(back, series)
    np.testing.assert_array_equal(back.array, series.array)
    liver, segments = read_labelmap(samples.dicom_liver_label, like=series)
    assert segments is None and set(np.unique(liver.array)) == {0, 1}
    combined, _ = read_labelmap(samples.dicom_combined_label, like=back)
    assert set(np.unique(combined.array)) == {0, 1, 2, 3}
    assert series.same_geometry(liver) and back.same_geometry(liver)


def test_sitk_conversion_is_the_transpose(ct_volume: Volume) -> None:
    image = volume_to_sitk(ct_volume)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), ct_volume.array.transpose(2, 1, 0))
    assert image.GetSize() == ct_volume.shape
    assert_same_geometry(sitk_to_volume(image), ct_volume, atol=0)


def test_bool_and_float16_volumes_are_written(out_dir: Path) -> None:
    mask = Volume(np.zeros((4, 5, 6), dtype=bool))
    mask.array[1, 2, 3] = True
    assert read_volume(write_volume(mask, out_dir / "m.nii.gz")).array.dtype == np.uint8
    half = Volume(np.ones((4, 5, 6), dtype=np.float16))
    assert read_volume(write_volume(half, out_dir / "h.nrrd")).array.dtype == np.float32
    assert as_float32(half).array.dtype == np.float32


# --------------------------------------------------------------------------- label maps


def test_seg_nrrd_round_trip_on_real_labels(
    samples, ct_volume: Volume, ct_labels: Volume, out_dir: Path
) -> None:
    names = totalsegmentator_label_names("total")
    segments = segments_from_names({v: names[v] for v in np.unique(ct_labels.array) if v})
    path = write_labelmap(ct_labels, out_dir / "labels.seg.nrrd", segments)
    back, back_segments = read_labelmap(path, like=ct_volume)
    np.testing.assert_array_equal(back.array, ct_labels.array)
    assert back.array.dtype == np.uint8
    assert back_segments is not None and sorted(back_segments) == sorted(segments)
    assert back_segments[5].name == "liver"
    np.testing.assert_allclose(back_segments[5].color, organ_color("liver"), atol=1e-6)
    # slicerio (what Slicer's format readers agree with) sees names, colours, values and terminology
    seg = slicerio.read_segmentation(str(path))
    by_name = {s["name"]: s for s in seg["segments"]}
    assert by_name["liver"]["labelValue"] == 5 and by_name["spleen"]["labelValue"] == 1
    np.testing.assert_allclose(by_name["spleen"]["color"], organ_color("spleen"), atol=1e-5)
    assert by_name["kidney_left"]["terminology"]["type"][1] == "64033007"
    assert by_name["kidney_left"]["terminology"]["typeModifier"][1] == "7771000"
    np.testing.assert_allclose(seg["ijkToLPS"], ct_volume.ijk_to_lps, atol=1e-6)
    np.testing.assert_array_equal(slicerio.segment_mask(seg, "liver"), ct_labels.array == 5)


@pytest.mark.parametrize("ext", LABEL_EXTENSIONS)
def test_label_round_trip_on_oblique_grid(oblique_volume: Volume, ext: str, out_dir: Path) -> None:
    labels = oblique_volume.with_array((np.abs(oblique_volume.array) % 4).astype(np.int32))
    segments = {1: SegmentInfo("liver", 1), 3: SegmentInfo("tumour core", 3, color=(0.1, 0.2, 0.3))}
    path = write_labelmap(labels, out_dir / f"labels{ext}", segments)
    back, back_segments = read_labelmap(path, like=oblique_volume)
    assert_same_geometry(back, labels)
    np.testing.assert_array_equal(back.array, labels.array)
    assert back.array.dtype == np.uint8
    if ext == ".seg.nrrd":
        names = {v: s.name for v, s in (back_segments or {}).items()}
        assert names == {1: "liver", 2: "Segment_2", 3: "tumour core"}
        assert back_segments[3].color == pytest.approx((0.1, 0.2, 0.3))
        assert back_segments[3].terminology is None
    else:
        assert back_segments is None


@pytest.mark.parametrize("ext", [".nii.gz", ".seg.nrrd", ".mha"])
def test_large_label_values_are_written_as_uint16(ext: str, out_dir: Path) -> None:
    array = np.zeros((6, 5, 4), dtype=np.int64)
    array[1, 1, 1], array[2, 2, 2] = 300, 7
    back, _ = read_labelmap(write_labelmap(Volume(array), out_dir / f"big{ext}"))
    assert back.array.dtype == np.uint16
    np.testing.assert_array_equal(back.array, array)
    # a float label map with whole values is accepted and stored compactly
    small, _ = read_labelmap(write_volume(Volume((array % 256).astype(np.float32)), out_dir / "float.nrrd"))
    assert small.array.dtype == np.uint8 and small.array[2, 2, 2] == 7


def test_overlapping_slicer_segments_are_flattened_first_wins(out_dir: Path, caplog) -> None:
    shape = (8, 9, 10)
    seg = slicerio.create_segmentation(shape, np.diag([2.0, 2.0, 3.0, 1.0]))
    index = np.indices(shape)
    first, second = np.all((index >= 1) & (index < 5), axis=0), np.all((index >= 3) & (index < 7), axis=0)
    slicerio.add_segment(seg, first, {"name": "liver", "color": [1.0, 0.0, 0.0]})
    slicerio.add_segment(seg, second, {"name": "tumour", "color": [0.0, 1.0, 0.0]})
    assert seg["voxels"].ndim == 4  # two layers, both segments have label value 1
    path = out_dir / "overlap.seg.nrrd"
    slicerio.write_segmentation(str(path), seg)
    with caplog.at_level(logging.WARNING, logger="pesf.io.labelmap"):
        labels, segments = read_labelmap(path)
    assert "overlapping" in caplog.text
    assert segments is not None and {v: s.name for v, s in segments.items()} == {1: "liver", 2: "tumour"}
    np.testing.assert_array_equal(labels.array == 1, first)
    np.testing.assert_array_equal(labels.array == 2, second & ~first)
    np.testing.assert_allclose(labels.spacing, [2.0, 2.0, 3.0])


def test_segmentation_saved_as_plain_nrrd_name_is_recognised(ct_labels: Volume, out_dir: Path) -> None:
    seg_path = write_labelmap(ct_labels, out_dir / "a.seg.nrrd", {5: default_segment_info("liver", 5)})
    plain = out_dir / "a.nrrd"
    shutil.copy(seg_path, plain)
    _, segments = read_labelmap(plain)
    assert segments is not None and segments[5].name == "liver" and segments[1].name == "Segment_1"
    plain_seg = write_labelmap(ct_labels, out_dir / "plain.nrrd").rename(out_dir / "p.seg.nrrd")
    labels, segments = read_labelmap(plain_seg)  # a plain label map under a Slicer name
    assert segments is None and np.array_equal(labels.array, ct_labels.array)


# --------------------------------------------------------------------------- organ table


def test_organ_table_codes_and_colours() -> None:
    table = organ_table()
    for name in "liver spleen kidney_left kidney_right stomach pancreas gallbladder aorta".split():
        assert name in table
        assert table[name].terminology["category"] == ["SCT", "123037004", "Anatomical Structure"]
        assert all(0.0 <= c <= 1.0 for c in table[name].color)
    assert table["liver"].terminology["type"][:2] == ["SCT", "10200004"]
    assert table["kidney_right"].terminology["typeModifier"][:2] == ["SCT", "24028007"]
    assert organ_info("Kidney Left") is table["kidney_left"]
    assert organ_color("inferior_vena_cava") == table["inferior_vena_cava"].color


def test_unknown_organ_colour_is_stable_and_valid() -> None:
    color = organ_color("my_special_lesion")
    assert color == organ_color("my_special_lesion")
    assert len(color) == 3 and all(0.0 <= c <= 1.0 for c in color)
    assert color != organ_color("another_lesion")
    info = default_segment_info("my_special_lesion", 7)
    assert info.terminology is None and info.value == 7


def test_terminology_string_round_trip() -> None:
    entry = default_segment_info("kidney_left", 3).terminology_dict()
    text = terminology_to_string(entry)
    assert text.count("~") == 6 and "SCT^64033007^Kidney" in text
    assert terminology_from_string(text) == entry
    assert SegmentInfo("k", 3, terminology=text).terminology_dict() == entry


def test_totalsegmentator_tables(samples) -> None:
    assert totalsegmentator_label_names("total")[5] == "liver"
    assert totalsegmentator_label_names("total_mr")[23] == "aorta"
    with pytest.raises(PesfError, match="no TotalSegmentator label table"):
        totalsegmentator_label_names("nope")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("liver=5,spleen=1", {"liver": 5, "spleen": 1}),
        (" liver = 1 , kidney_left=300 ", {"liver": 1, "kidney_left": 300}),
    ],
)
def test_parse_organs_arg(text: str, expected: dict[str, int]) -> None:
    assert parse_organs_arg(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ["empty"]),
        ("liver", ["not name=value"]),
        ("liver=", ["not name=value"]),
        ("=3", ["not name=value"]),
        ("liver=one", ["not a whole number"]),
        ("liver=1.5", ["not a whole number"]),
        ("liver=0", ["from 1 to 65535"]),
        ("liver=-2", ["from 1 to 65535"]),
        ("liver=70000", ["from 1 to 65535"]),
        ("liver=1,liver=2", ["twice"]),
        ("liver=1,spleen=1", ["both have label value 1"]),
        ("liver=1,,spleen=2", ["empty item"]),
        ("li/ver=1", ["unusual characters"]),
    ],
)
def test_parse_organs_arg_errors(text: str, words: list[str], one_line_error) -> None:
    with pytest.raises(PesfError) as excinfo:
        parse_organs_arg(text)
    one_line_error(excinfo, *words)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"name": "x", "value": 0}, ["label value 0"]),
        ({"name": "x", "value": 2.5}, ["whole number"]),
        ({"name": "x", "value": 1, "color": (255, 0, 0)}, ["from 0 to 1"]),
        ({"name": "x", "value": 1, "terminology": "not~a~term"}, ["7 fields"]),
    ],
)
def test_segment_info_errors(kwargs: dict, words: list[str], one_line_error) -> None:
    with pytest.raises(PesfError) as excinfo:
        SegmentInfo(**kwargs).terminology_dict()
    one_line_error(excinfo, *words)


# --------------------------------------------------------------------------- bad inputs


def _nan_image() -> sitk.Image:
    array = np.zeros((4, 5, 6), dtype=np.float32)
    array[1, 2, 3], array[0, 0, 0] = np.nan, np.inf
    return sitk.GetImageFromArray(array)


# How to make each bad input: an image to write, bytes to write, None (missing) or "folder".
_BAD = {
    "2d": sitk.Image(8, 9, sitk.sitkInt16),
    "4d": sitk.Image([4, 5, 6, 2], sitk.sitkFloat32),
    "rgb": sitk.Image([4, 5, 6], sitk.sitkVectorUInt8, 3),
    "slice": sitk.Image([8, 9, 1], sitk.sitkInt16),
    "nan": _nan_image(),
    "text": b"this is not an image\n",
    "empty": b"",
}


@pytest.mark.parametrize(
    ("name", "maker", "words"),
    [
        ("missing.nii.gz", None, ["does not exist"]),
        ("text.nii.gz", "text", ["cannot read image", "not an image"]),
        ("text.nrrd", "text", ["cannot read image"]),
        ("empty.mha", "empty", ["empty file"]),
        ("flat.nii.gz", "2d", ["is 2D", "(8, 9)", "needs a 3D volume"]),
        ("slice.nrrd", "slice", ["is 2D", "(8, 9, 1)"]),
        ("series.nii.gz", "4d", ["is 4D", "(4, 5, 6, 2)", "needs a 3D volume"]),
        ("colour.mha", "rgb", ["3 values per voxel"]),
        ("nan.nii.gz", "nan", ["2 NaN or infinite voxels"]),
        ("nan.nrrd", "nan", ["2 NaN or infinite voxels"]),
        ("nan.mha", "nan", ["2 NaN or infinite voxels"]),
        ("no_dicom_here", "folder", ["holds no DICOM series"]),
    ],
)
def test_bad_images_give_one_line_errors(
    name: str, maker: str | None, words: list[str], tmp_path: Path, one_line_error
) -> None:
    path = tmp_path / name
    if maker == "folder":
        path.mkdir()
        (path / "readme.txt").write_text("hello")
    elif isinstance(_BAD.get(maker), bytes):
        path.write_bytes(_BAD[maker])
    elif maker is not None:
        sitk.WriteImage(_BAD[maker], str(path))
    with pytest.raises(PesfError) as excinfo:
        read_volume(path)
    one_line_error(excinfo, str(path), *words)


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.full((3, 4, 5), 0.5, dtype=np.float32), ["non-integer values"]),
        (np.full((3, 4, 5), -1, dtype=np.int16), ["negative values"]),
        (np.full((3, 4, 5), 70000, dtype=np.int32), ["label value 70000"]),
    ],
)
def test_bad_label_maps(
    array: np.ndarray, words: list[str], out_dir: Path, leftover_files, one_line_error
) -> None:
    path = write_volume(Volume(array), out_dir / "bad.nii.gz")
    with pytest.raises(PesfError) as excinfo:
        read_labelmap(path)
    one_line_error(excinfo, *words)
    with pytest.raises(PesfError) as excinfo:
        write_labelmap(Volume(array), out_dir / "out.seg.nrrd")
    one_line_error(excinfo, *words)
    assert not (out_dir / "out.seg.nrrd").exists() and leftover_files(out_dir) == []


def test_label_map_on_another_grid_is_refused(samples, ct_volume: Volume, one_line_error) -> None:
    with pytest.raises(PesfError) as excinfo:
        read_labelmap(samples.mr_label, like=ct_volume)
    one_line_error(
        excinfo, "geometry differs from the image", "shape (117, 91, 20) vs (122, 101, 30)", "resample"
    )


def test_damaged_segmentation_is_refused(out_dir: Path, one_line_error) -> None:
    path = out_dir / "broken.seg.nrrd"
    path.write_text("NRRD0004\ntype: nonsense\n")
    with pytest.raises(PesfError) as excinfo:
        read_labelmap(path)
    one_line_error(excinfo, "cannot read", "broken.seg.nrrd", "damaged")


@pytest.mark.parametrize("ext", [".seg.nrrd", ".nii.gz", ".nrrd", ".mha"])
def test_writing_into_a_missing_folder_fails_cleanly(
    ct_labels: Volume, ext: str, tmp_path: Path, one_line_error
) -> None:
    target = tmp_path / "missing" / f"labels{ext}"
    with pytest.raises(PesfError) as excinfo:
        write_labelmap(ct_labels, target)
    one_line_error(excinfo, "output folder", "does not exist", "create it")
    with pytest.raises(PesfError):
        write_volume(ct_labels, target.with_name("image.nii.gz"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("func", "name"), [(write_volume, "x.png"), (write_labelmap, "x.nhdr"), (write_volume, "x")]
)
def test_unsupported_output_extensions(
    ct_labels: Volume, func, name: str, out_dir: Path, one_line_error
) -> None:
    with pytest.raises(PesfError) as excinfo:
        func(ct_labels, out_dir / name)
    one_line_error(excinfo, "unsupported extension")
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("ext", [".nii.gz", ".seg.nrrd"])
def test_failure_mid_write_keeps_the_old_file_and_leaves_no_temp(
    ct_labels: Volume, ext: str, out_dir: Path, leftover_files, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = out_dir / f"labels{ext}"
    target.write_bytes(b"old content")

    def half_write(_image_or_path, *args, **kwargs) -> None:
        path = _image_or_path if isinstance(_image_or_path, str) else args[0]
        Path(path).write_bytes(b"partial")
        raise RuntimeError("disk full")

    if ext == ".seg.nrrd":
        monkeypatch.setattr(slicerio, "write_segmentation", lambda path, seg, **kw: half_write(path))
    else:
        monkeypatch.setattr(sitk, "WriteImage", half_write)
    with pytest.raises((PesfError, RuntimeError)):
        write_labelmap(ct_labels, target)
    assert target.read_bytes() == b"old content"
    assert leftover_files(out_dir) == []


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize(
    ("name", "stem", "ext"),
    [
        ("ct.nii.gz", "ct", ".nii.gz"),
        ("seg.SEG.NRRD", "seg", ".SEG.NRRD"),
        ("liver.mrk.json", "liver", ".mrk.json"),
        ("a.b.nrrd", "a.b", ".nrrd"),
        ("noext", "noext", ""),
    ],
)
def test_split_extension(name: str, stem: str, ext: str) -> None:
    assert split_extension(name) == (stem, ext)


def test_atomic_path_keeps_the_extension_and_cleans_up(out_dir: Path, leftover_files) -> None:
    target = out_dir / "image.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == out_dir and tmp.name.startswith(".image.tmp-") and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"x")
        assert not target.exists()
    assert target.read_bytes() == b"x" and leftover_files(out_dir) == []
    with pytest.raises(ValueError), atomic_write(out_dir / "status.json") as f:
        f.write("half")
        raise ValueError("boom")
    assert not (out_dir / "status.json").exists() and leftover_files(out_dir) == []


def test_atomic_path_without_output_is_an_error(out_dir: Path) -> None:
    with pytest.raises(PesfError, match="produced no file"), atomic_path(out_dir / "x.nrrd"):
        pass
    assert list(out_dir.iterdir()) == []


def test_write_json_atomic(out_dir: Path, leftover_files, one_line_error) -> None:
    path = write_json_atomic(out_dir / "status.json", {"epoch": 3, "loss": 0.25})
    assert json.loads(path.read_text()) == {"epoch": 3, "loss": 0.25}
    with pytest.raises(TypeError):
        write_json_atomic(out_dir / "bad.json", {"x": object()})
    assert not (out_dir / "bad.json").exists() and leftover_files(out_dir) == []
    with pytest.raises(PesfError) as excinfo:
        write_json_atomic(out_dir / "nowhere" / "s.json", {})
    one_line_error(excinfo, "output folder", "does not exist")
    with pytest.raises(PesfError, match="is a folder"):
        write_json_atomic(out_dir, {})
