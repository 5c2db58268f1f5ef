"""The case store: round trips, revisions, pseudo masks, rejected organs, safe ids, crashes, concurrent readers,
and the ``pesf cases`` commands with every kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import pesf.train.store as store_module
from pesf.cli import main
from pesf.errors import PesfError
from pesf.io import Volume, read_labelmap, read_volume, write_labelmap, write_volume
from pesf.train import CaseRecord, CaseStore, OrganRecord
from pesf.train.store import case_id_from_name, check_case_id

CT_ORGANS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "stomach": 6}


@pytest.fixture(scope="module")
def ct(samples) -> tuple[Volume, Volume]:
    """The sample CT and its label map reduced to CT_ORGANS (other values set to 0)."""
    image = read_volume(samples.ct_image)
    label, _ = read_labelmap(samples.ct_label, like=image)
    kept = np.where(np.isin(label.array, list(CT_ORGANS.values())), label.array, 0).astype(np.uint8)
    return image, label.with_array(kept)


def _records(organs: dict[str, int], status: str = "accepted", **kwargs) -> list[OrganRecord]:
    return [OrganRecord(name, value, status, **kwargs) for name, value in organs.items()]


def _grid(shape=(24, 16, 8)) -> Volume:
    """A small oblique, anisotropic, offset image."""
    angle = np.deg2rad(20.0)
    direction = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    array = (np.arange(np.prod(shape)).reshape(shape) % 200).astype(np.int16)
    return Volume(array, origin=(-10.5, 20.25, 3.0), spacing=(0.8, 1.1, 2.5), direction=direction)


def _boxes(image: Volume, boxes: dict[int, tuple[slice, ...]]) -> Volume:
    array = np.zeros(image.shape, np.uint8)
    for value, box in boxes.items():
        array[box] = value
    return image.with_array(array)


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# ------------------------------------------------------------------------------------------ round trip


def test_add_get_load_round_trip_keeps_geometry(tmp_path, ct):
    image, label = ct
    store = CaseStore(tmp_path / "ws", create=True)
    meta = json.loads((tmp_path / "ws" / "workspace.json").read_text())
    assert meta["format"] == "pesf-workspace" and meta["version"] == 1 and meta["created"]
    record = store.add_case(image, label, _records(CT_ORGANS, author="alice"), case_id="ct01")
    assert isinstance(record, CaseRecord) and record.revision == 1 and record.unknown_file is None
    assert set(record.organs) == set(CT_ORGANS) and all(r.updated for r in record.organs.values())
    assert record.organs["liver"].author == "alice"

    store = CaseStore(tmp_path / "ws")  # reopened without create
    assert store.case_ids() == ["ct01"]
    assert store.get("ct01") == record
    assert [r.case_id for r in store.list_cases()] == ["ct01"]
    assert _visible(store.case_dir("ct01")) == ["case.json", "image.nii.gz", "label-1.nii.gz"]
    loaded = store.load_image("ct01")
    assert loaded.same_geometry(image) and loaded.array.dtype == image.array.dtype
    np.testing.assert_array_equal(loaded.array, image.array)
    labels = store.load_label("ct01")
    assert labels.same_geometry(image)
    np.testing.assert_array_equal(labels.array, label.array)
    assert store.load_unknown("ct01").shape == image.shape and not store.load_unknown("ct01").any()
    data = store.load_case("ct01")
    assert data.record == record and data.image.same_geometry(image)
    assert record.label_names() == {v: n for n, v in CT_ORGANS.items()}
    samples = store.samples()
    assert [(c, r.name) for c, r in samples] == [("ct01", n) for n in sorted(CT_ORGANS)]
    assert store.samples(("rejected",)) == []
    assert [r.name for _, r in store.samples(organs=["liver"])] == ["liver"]
    assert len(store.require_samples()) == len(CT_ORGANS)


def test_oblique_volume_round_trip(tmp_path, oblique_volume):
    store = CaseStore(tmp_path / "ws", create=True)
    label = oblique_volume.with_array((np.abs(oblique_volume.array) < 300).astype(np.uint8) * 7)
    record = store.add_case(oblique_volume, label, [OrganRecord("lesion", 7, "pseudo", confidence=0.8)])
    assert check_case_id(record.case_id) == record.case_id
    data = store.load_case(record.case_id)
    assert data.image.same_geometry(oblique_volume) and data.label.same_geometry(oblique_volume)
    np.testing.assert_allclose(data.image.direction, oblique_volume.direction, atol=1e-6)
    np.testing.assert_array_equal(data.label.array, label.array)
    assert data.record.organs["lesion"].confidence == pytest.approx(0.8)


def test_overwrite_replaces_the_case_and_keeps_counting_revisions(tmp_path):
    image = _grid()
    store = CaseStore(tmp_path / "ws", create=True)
    store.add_case(image, _boxes(image, {1: np.s_[2:5]}), _records({"a": 1}), case_id="c")
    with pytest.raises(PesfError, match="already exists"):
        store.add_case(image, _boxes(image, {1: np.s_[2:5]}), _records({"a": 1}), case_id="c")
    other = _grid((10, 10, 4))
    record = store.add_case(
        other, _boxes(other, {2: np.s_[1:3]}), _records({"b": 2}), case_id="c", overwrite=True
    )
    assert record.revision == 2 and set(record.organs) == {"b"}
    assert _visible(store.case_dir("c")) == ["case.json", "image-2.nii.gz", "label-2.nii.gz"]
    assert store.load_image("c").shape == (10, 10, 4)


# ------------------------------------------------------------------------------------------ updates


def test_update_with_a_new_label_makes_a_new_revision(tmp_path):
    image = _grid()
    store = CaseStore(tmp_path / "ws", create=True)
    store.add_case(
        image, _boxes(image, {1: np.s_[2:6], 2: np.s_[10:14]}), _records({"a": 1, "b": 2}), case_id="c"
    )
    new_label = _boxes(image, {1: np.s_[3:8], 2: np.s_[10:12]})
    record = store.update_case(
        "c", [OrganRecord("a", 1, "accepted", confidence=0.9, n_clicks=3)], label=new_label
    )
    assert record.revision == 2 and record.label_file == "label-2.nii.gz"
    assert _visible(store.case_dir("c")) == ["case.json", "image.nii.gz", "label-2.nii.gz"]
    on_disk = json.loads((store.case_dir("c") / "case.json").read_text())
    assert on_disk["label_file"] == "label-2.nii.gz" and on_disk["revision"] == 2
    assert on_disk["organs"]["a"]["n_clicks"] == 3 and on_disk["organs"]["b"]["status"] == "accepted"
    np.testing.assert_array_equal(store.load_label("c").array, new_label.array)

    # records alone: same revision, same files
    before = store.get("c").organs["b"].updated
    record = store.update_case("c", [OrganRecord("a", 1, "accepted", confidence=0.5)])
    assert (
        record.revision == 2 and record.organs["a"].confidence == 0.5 and record.organs["b"].updated == before
    )
    # dropping an organ makes its voxels background
    record = store.update_case("c", [], remove_organs=["b"])
    assert record.revision == 3 and set(record.organs) == {"a"}
    assert set(np.unique(store.load_label("c").array).tolist()) == {0, 1}
    with pytest.raises(PesfError, match="geometry differs"):
        store.update_case("c", [], label=_boxes(_grid((24, 16, 9)), {1: np.s_[1:3]}))


def test_set_organ_masks_paints_pseudo_without_overwriting_accepted(tmp_path, ct):
    image, label = ct
    store = CaseStore(tmp_path / "ws", create=True)
    accepted = {"liver": 5, "spleen": 1}
    base = label.with_array(np.where(np.isin(label.array, list(accepted.values())), label.array, 0))
    store.add_case(image, base, _records(accepted), case_id="ct")
    liver = label.array == 5
    kidney = label.array == 2
    # a pseudo kidney that spills into the liver, and a pseudo organ with a value above 255
    spill = kidney | (liver & (np.cumsum(liver, axis=0) <= 3))
    stomach = label.array == 6
    record = store.set_organ_masks(
        "ct",
        {"kidney_right": spill, "stomach": stomach},
        {
            "kidney_right": OrganRecord("kidney_right", 2, "pseudo", 0.7, "automatic", "pesf-model v3", "3"),
            "stomach": OrganRecord("stomach", 300, "pseudo", 0.6, "automatic", "pesf-model v3"),
        },
    )
    assert record.revision == 2 and record.organs["kidney_right"].model_version == "3"
    painted = store.load_label("ct").array
    assert painted.dtype == np.uint16
    np.testing.assert_array_equal(painted == 5, liver)  # the liver kept every voxel
    np.testing.assert_array_equal(painted == 2, kidney)
    np.testing.assert_array_equal(painted == 300, stomach)
    assert [r.name for r in record.organs_with_status("pseudo")] == ["kidney_right", "stomach"]

    # a new mask replaces the organ's voxels; a rejected organ's voxels become unknown
    smaller = kidney & (np.cumsum(kidney, axis=2) <= 2)
    record = store.set_organ_masks(
        "ct",
        {"kidney_right": smaller, "stomach": stomach},
        {
            "kidney_right": OrganRecord("kidney_right", 2, "pseudo"),
            "stomach": OrganRecord("stomach", 300, "rejected"),
        },
    )
    _, labels, unknown = store.load_labels("ct")
    np.testing.assert_array_equal(labels.array == 2, smaller)
    assert not np.any(labels.array == 300)
    np.testing.assert_array_equal(unknown, stomach)
    assert record.unknown_file == "unknown-3.nii.gz"
    assert _visible(store.case_dir("ct")) == [
        "case.json",
        "image.nii.gz",
        "label-3.nii.gz",
        "unknown-3.nii.gz",
    ]
    with pytest.raises(PesfError, match="no organ record"):
        store.set_organ_masks("ct", {"pancreas": smaller}, {})
    with pytest.raises(PesfError, match="is empty"):
        store.set_organ_masks(
            "ct",
            {"pancreas": np.zeros(image.shape, bool)},
            {"pancreas": OrganRecord("pancreas", 7, "pseudo")},
        )
    with pytest.raises(PesfError, match="shape"):
        store.set_organ_masks(
            "ct", {"pancreas": np.ones((3, 3, 3), bool)}, {"pancreas": OrganRecord("pancreas", 7, "pseudo")}
        )


def test_rejected_organ_voxels_go_to_unknown(tmp_path, ct):
    image, label = ct
    store = CaseStore(tmp_path / "ws", create=True)
    records = _records({"liver": 5, "spleen": 1}) + [OrganRecord("kidney_left", 3, "rejected")]
    partial = label.with_array(np.where(np.isin(label.array, [1, 3, 5]), label.array, 0))
    extra = np.zeros(image.shape, bool)
    extra[:5] = True  # a user-given unknown slab; labelled voxels in it stay known
    record = store.add_case(image, partial, records, case_id="ct", unknown=extra)
    _, labels, unknown = store.load_labels("ct")
    assert not np.any(labels.array == 3)
    np.testing.assert_array_equal(unknown, (label.array == 3) | (extra & (partial.array == 0)))
    assert record.organs["kidney_left"].status == "rejected" and record.unknown_file == "unknown-1.nii.gz"
    assert [r.name for _, r in store.samples()] == ["liver", "spleen"]

    # rejecting an accepted organ later moves its voxels too
    record = store.update_case("ct", [OrganRecord("spleen", 1, "rejected", author="bob")])
    _, labels, unknown = store.load_labels("ct")
    assert record.revision == 2 and not np.any(labels.array == 1) and np.all(unknown[label.array == 1])
    assert [r.name for _, r in store.samples(("rejected",))] == ["kidney_left", "spleen"]


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "bad_id", ["../x", "/abs", "a/b", "..", "", ".hidden", "a\\b", "x" * 129, "a.", "CON", "nul.txt"]
)
def test_case_ids_cannot_escape_the_store(tmp_path, bad_id, one_line_error):
    image = _grid()
    store = CaseStore(tmp_path / "ws", create=True)
    with pytest.raises(PesfError) as excinfo:
        store.add_case(image, _boxes(image, {1: np.s_[2:5]}), _records({"a": 1}), case_id=bad_id)
    one_line_error(excinfo, "case id")
    for call in (store.get, store.remove_case, store.load_label, store.case_dir):
        with pytest.raises(PesfError):
            call(bad_id)
    assert _visible(tmp_path) == ["ws"] and _visible(store.cases_dir) == []


def test_case_ids_from_names():
    assert case_id_from_name("/data/A ct (1).nii.gz") == "A_ct_1"
    assert case_id_from_name("../..").startswith("case-")
    assert check_case_id(case_id_from_name("-_-.nii.gz")) and check_case_id("case_01.a-b") == "case_01.a-b"


def test_bad_input_gives_one_line_errors(tmp_path, one_line_error):
    image = _grid()
    label = _boxes(image, {1: np.s_[2:5], 7: np.s_[8:10]})
    with pytest.raises(PesfError) as excinfo:
        CaseStore(tmp_path / "missing")
    one_line_error(excinfo, "does not exist", "pesf cases add")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(PesfError) as excinfo:
        CaseStore(tmp_path / "other", create=True)
    one_line_error(excinfo, "not a PESF workspace")
    store = CaseStore(tmp_path / "ws", create=True)
    with pytest.raises(PesfError) as excinfo:
        store.require_samples()
    one_line_error(excinfo, "has no accepted or pseudo-labelled organs", "pesf cases add")

    cases = {
        "label value 7 has no organ name; give it with --organs NAME=7": (label, _records({"a": 1})),
        "spacing": (
            Volume(label.array, image.origin, image.spacing * 2, image.direction),
            _records({"a": 1, "b": 7}),
        ),
        "has no voxels": (label, _records({"a": 1, "b": 7, "c": 9})),
        "both have label value 1": (label, _records({"a": 1}) + [OrganRecord("b", 1, "pseudo")]),
        "non-integer": (image.with_array(label.array + 0.5), _records({"a": 1, "b": 7})),
    }
    for words, (bad_label, records) in cases.items():
        with pytest.raises(PesfError) as excinfo:
            store.add_case(image, bad_label, records, case_id="c")
        one_line_error(excinfo, words)
    with pytest.raises(PesfError) as excinfo:
        store.add_case(image, label, _records({"a": 1, "b": 7}), case_id="c", unknown=np.zeros((2, 2, 2)))
    one_line_error(excinfo, "unknown mask", "shape")
    for kwargs, words in [
        ({"status": "maybe"}, "status 'maybe'"),
        ({"status": "pseudo", "source": "x"}, "source"),
    ]:
        with pytest.raises(PesfError) as excinfo:
            OrganRecord("a", 1, **kwargs)
        one_line_error(excinfo, words)
    for value in (0, 70000, 1.5, True):
        with pytest.raises(PesfError):
            OrganRecord("a", value, "accepted")
    with pytest.raises(PesfError):
        OrganRecord("a", 1, "accepted", confidence=1.5)
    assert store.case_ids() == [] and _visible(store.cases_dir) == []

    store.add_case(image, label, _records({"a": 1, "b": 7}), case_id="c")
    with pytest.raises(PesfError) as excinfo:
        store.get("d")
    one_line_error(excinfo, "'d' is not in workspace", "its cases are c")
    with pytest.raises(PesfError) as excinfo:
        store.add_case(image, label, _records({"a": 1, "b": 7}), case_id="C")
    one_line_error(excinfo, "letter case")
    with pytest.raises(PesfError, match="samples|status"):
        store.samples(("good",))
    (store.case_dir("c") / "case.json").write_text("{not json")
    with pytest.raises(PesfError) as excinfo:
        store.list_cases()
    one_line_error(excinfo, "damaged")


# ------------------------------------------------------------------------------------------ crashes


def test_crash_mid_write_leaves_the_previous_case_intact(tmp_path, monkeypatch):
    image = _grid()
    store = CaseStore(tmp_path / "ws", create=True)
    first = _boxes(image, {1: np.s_[2:5]})
    record = store.add_case(image, first, _records({"a": 1}), case_id="c")
    folder = store.case_dir("c")
    real_write = store_module.write_labelmap

    def crash(volume, path, segments=None):
        # the temporary file exists, then the process "dies" (nothing cleans up after a hard crash)
        tmp = Path(path).with_name(f".{Path(path).name[:-7]}.tmp-dead.nii.gz")
        real_write(volume, tmp)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(store_module, "write_labelmap", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.update_case("c", [], label=_boxes(image, {1: np.s_[3:9]}))
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.add_case(image, first, _records({"a": 1}), case_id="new")
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.set_organ_masks("c", {"b": np.ones(image.shape, bool)}, {"b": OrganRecord("b", 2, "pseudo")})
    monkeypatch.setattr(store_module, "write_labelmap", real_write)

    def json_crash(path, obj, indent=2):
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "write_json_atomic", json_crash)
    with pytest.raises(OSError, match="disk full"):
        store.update_case("c", [], label=_boxes(image, {1: np.s_[3:9]}))
    monkeypatch.undo()

    assert store.case_ids() == ["c"] and store.get("c") == record
    np.testing.assert_array_equal(store.load_label("c").array, first.array)
    assert _visible(store.cases_dir) == ["c"]
    assert _visible(folder) == ["case.json", "image.nii.gz", "label-1.nii.gz"]
    # what a hard crash leaves: a half-assembled case folder, a temporary file, an orphan revision file
    half = store.cases_dir / ".tmp-zz-0001"
    half.mkdir()
    (half / "case.json").write_text("{}")
    (folder / "label-2.nii.gz").write_bytes(b"partial")
    assert store.case_ids() == ["c"] and store.get("c") == record
    record = store.update_case("c", [], label=_boxes(image, {1: np.s_[3:9]}))
    assert record.revision == 2
    assert sorted(p.name for p in folder.iterdir()) == ["case.json", "image.nii.gz", "label-2.nii.gz"]
    assert sorted(p.name for p in store.cases_dir.iterdir()) == ["c"]
    np.testing.assert_array_equal(store.load_label("c").array, _boxes(image, {1: np.s_[3:9]}).array)


# ------------------------------------------------------------------------------------------ concurrency

N_UPDATES = 20


def _state(image: Volume, k: int) -> tuple[Volume, np.ndarray | None]:
    """Update k: organ 'a' fills slices 0..k (axis 0); slice k+1 is unknown when k is even."""
    label = np.zeros(image.shape, np.uint8)
    label[: k + 1] = 1
    unknown = None
    if k % 2 == 0:
        unknown = np.zeros(image.shape, bool)
        unknown[k + 1] = True
    return image.with_array(label), unknown


def _check_consistent(record: CaseRecord, label: np.ndarray, unknown: np.ndarray) -> None:
    k = record.organs["a"].n_clicks
    filled = np.flatnonzero((label == 1).any(axis=(1, 2)))
    assert filled.tolist() == list(range(k + 1)), (k, filled)
    expected = np.zeros(label.shape, bool)
    if k % 2 == 0:
        expected[k + 1] = True
    assert np.array_equal(unknown, expected), k
    assert (record.unknown_file is None) == (k % 2 == 1)


def _reader_loop(workspace: Path, stop: threading.Event | Path) -> int:
    """Read the store until told to stop; return the number of consistent reads (raise on any problem)."""
    store = CaseStore(workspace)
    reads = 0
    while not (stop.is_set() if isinstance(stop, threading.Event) else stop.exists()):
        assert store.case_ids() == ["c"]
        assert [r.case_id for r in store.list_cases()] == ["c"]
        assert [c for c, _ in store.samples()] == ["c"]
        if reads % 3 == 0:
            data = store.load_case("c")
            _check_consistent(data.record, data.label.array, data.unknown)
        else:
            record, label, unknown = store.load_labels("c")
            _check_consistent(record, label.array, unknown)
        reads += 1
    return reads


def _write_updates(store: CaseStore, image: Volume) -> None:
    for k in range(1, N_UPDATES + 1):
        label, unknown = _state(image, k)
        store.update_case("c", [OrganRecord("a", 1, "pseudo", n_clicks=k)], label=label, unknown=unknown)


@pytest.fixture
def busy_case(tmp_path) -> tuple[CaseStore, Volume]:
    image = _grid((24, 32, 16))
    store = CaseStore(tmp_path / "ws", create=True)
    label, unknown = _state(image, 0)
    store.add_case(image, label, [OrganRecord("a", 1, "pseudo", n_clicks=0)], case_id="c", unknown=unknown)
    return store, image


def test_reader_thread_never_sees_a_half_update(busy_case):
    store, image = busy_case
    stop = threading.Event()
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["reads"] = _reader_loop(store.root, stop)
        except BaseException as exc:  # reported in the main thread
            result["error"] = exc

    reader = threading.Thread(target=run)
    reader.start()
    try:
        _write_updates(store, image)
    finally:
        stop.set()
        reader.join(timeout=60)
    assert "error" not in result, repr(result.get("error"))
    assert result["reads"] > 0
    assert store.get("c").revision == N_UPDATES + 1
    last = N_UPDATES + 1
    assert _visible(store.case_dir("c")) == [
        "case.json",
        "image.nii.gz",
        f"label-{last}.nii.gz",
        f"unknown-{last}.nii.gz",
    ]


def test_reader_process_never_sees_a_half_update(busy_case, tmp_path):
    store, image = busy_case
    stop = tmp_path / "stop"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import _reader_loop
        print("ready", flush=True)
        print("reads", _reader_loop(Path({str(store.root)!r}), Path({str(stop)!r})), flush=True)
        """
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
        _write_updates(store, image)
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert int(out.split()[-1]) > 0, out


# ------------------------------------------------------------------------------------------ commands


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cases_add_list_remove(tmp_path, samples, capsys):
    ws = tmp_path / "ws"
    organs = ",".join(f"{n}={v}" for n, v in CT_ORGANS.items())
    code, out, err = _run(
        [
            "cases",
            "add",
            ws,
            samples.ct_image,
            samples.ct_label,
            "--organs",
            organs,
            "--ignore-unnamed",
            "--author",
            "alice",
        ],
        capsys,
    )
    assert code == 0, err
    assert "case A_ct_sm_image (revision 1)" in out and "liver" in out and "voxels" in out
    code, out, err = _run(
        [
            "cases",
            "add",
            ws,
            samples.ct_image,
            samples.ct_label,
            "--organs",
            organs,
            "--ignore-unnamed",
            "--status",
            "pseudo",
            "--case-id",
            "ct2",
        ],
        capsys,
    )
    assert code == 0, err
    store = CaseStore(ws)
    assert store.case_ids() == ["A_ct_sm_image", "ct2"]
    assert store.get("ct2").organs["liver"].status == "pseudo"
    assert store.get("A_ct_sm_image").organs["liver"].author == "alice"

    code, out, err = _run(["cases", "list", ws], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["CASE", "REV", "ORGAN", "VALUE", "STATUS"]
    assert any(line.startswith("A_ct_sm_image") for line in lines) and "2 cases, 10 organs" in lines[-1]
    code, out, _ = _run(["cases", "list", ws, "--json"], capsys)
    doc = json.loads(out)
    assert [c["case_id"] for c in doc["cases"]] == ["A_ct_sm_image", "ct2"]
    assert doc["cases"][0]["organs"]["liver"]["value"] == 5

    code, out, err = _run(
        [
            "cases",
            "add",
            ws,
            samples.ct_image,
            samples.ct_label,
            "--organs",
            "liver=5",
            "--ignore-unnamed",
            "--overwrite",
            "--case-id",
            "ct2",
        ],
        capsys,
    )
    assert code == 0, err
    assert set(CaseStore(ws).get("ct2").organs) == {"liver"} and CaseStore(ws).get("ct2").revision == 2
    code, out, err = _run(["cases", "remove", ws, "ct2"], capsys)
    assert code == 0 and "removed case ct2" in out
    assert CaseStore(ws).case_ids() == ["A_ct_sm_image"]
    assert _visible(ws / "cases") == ["A_ct_sm_image"]


def test_cases_add_reads_organ_names_from_a_slicer_segmentation(tmp_path, ct, capsys):
    image, label = ct
    from pesf.io import default_segment_info

    write_volume(image, tmp_path / "img.nii.gz")
    write_labelmap(
        label, tmp_path / "seg.seg.nrrd", {v: default_segment_info(n, v) for n, v in CT_ORGANS.items()}
    )
    code, out, err = _run(
        ["cases", "add", tmp_path / "ws", tmp_path / "img.nii.gz", tmp_path / "seg.seg.nrrd"], capsys
    )
    assert code == 0, err
    assert set(CaseStore(tmp_path / "ws").get("img").organs) == set(CT_ORGANS)


def _bad_cli_inputs(tmp: Path, samples) -> dict[str, tuple[list, str]]:
    image, label = samples.ct_image, samples.ct_label
    moved = tmp / "moved.nii.gz"
    lab, _ = read_labelmap(label)
    write_labelmap(Volume(lab.array, lab.origin + 5.0, lab.spacing, lab.direction), moved)
    ws = tmp / "new-ws"
    named = "--organs=liver=5,spleen=1"
    return {
        "geometry": (["cases", "add", ws, image, moved, named, "--ignore-unnamed"], "geometry differs"),
        "unnamed": (["cases", "add", ws, image, label, named], "have no organ names"),
        "absent organ": (
            ["cases", "add", ws, image, label, "--organs", "liver=5,brain=200", "--ignore-unnamed"],
            "no voxels",
        ),
        "bad status": (
            ["cases", "add", ws, image, label, named, "--ignore-unnamed", "--status", "done"],
            "status 'done'",
        ),
        "bad case id": (
            ["cases", "add", ws, image, label, named, "--ignore-unnamed", "--case-id", "../x"],
            "case id",
        ),
        "bad organs": (["cases", "add", ws, image, label, "--organs", "liver"], "name=value"),
        "no names": (["cases", "add", ws, image, label], "holds no organ names"),
        "missing image": (["cases", "add", ws, tmp / "nope.nii.gz", label, named], "does not exist"),
        "list missing": (["cases", "list", ws], "does not exist"),
        "remove missing": (["cases", "remove", ws, "c"], "does not exist"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "geometry",
        "unnamed",
        "absent organ",
        "bad status",
        "bad case id",
        "bad organs",
        "no names",
        "missing image",
        "list missing",
        "remove missing",
    ],
)
def test_cases_bad_input_exits_2_with_one_line(tmp_path, samples, capsys, case):
    argv, words = _bad_cli_inputs(tmp_path, samples)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = _run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pesf: error: ") and words in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no workspace, no files left behind


def test_cases_bad_input_into_an_existing_workspace_changes_nothing(tmp_path, samples, capsys):
    ws = tmp_path / "ws"
    args = [samples.ct_image, samples.ct_label, "--organs", "liver=5", "--ignore-unnamed", "--case-id", "c"]
    assert _run(["cases", "add", ws, *args], capsys)[0] == 0
    listing = sorted(str(p.relative_to(ws)) for p in ws.rglob("*"))
    for argv, words in [
        (["cases", "add", ws, *args], "already exists"),
        (
            ["cases", "add", ws, samples.ct_image, samples.ct_label, "--organs", "liver=5", "--case-id", "d"],
            "no organ names",
        ),
        (["cases", "remove", ws, "zz"], "its cases are c"),
        (["cases", "remove", ws, "../c"], "case id"),
    ]:
        code, _, err = _run(argv, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert sorted(str(p.relative_to(ws)) for p in ws.rglob("*")) == listing
    assert os.path.isfile(ws / "cases" / "c" / "case.json")
