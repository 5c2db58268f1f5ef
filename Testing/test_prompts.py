"""Tests of pesf.io.prompts: PESF prompt JSON and Slicer markups, in IJK, LPS and RAS, on real and oblique grids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pesf.errors import PesfError
from pesf.io import OrganPrompt, PromptPoint, Volume, load_prompts, lps_to_ras, save_markups, save_prompts

# Fractional voxel indices well inside every test grid (the oblique grid is 23x17x11, the CT 122x101x30).
POINTS_IJK = np.array([[3.25, 4.5, 2.0], [10.0, 8.75, 5.5], [0.0, 0.0, 0.0], [21.6, 15.9, 9.4]])
SIGNS = [True, True, False, True]


@pytest.fixture(params=["ct", "oblique", "oblique_flipped"])
def image(request: pytest.FixtureRequest, ct_volume: Volume, oblique_factory) -> Volume:
    if request.param == "ct":
        return ct_volume
    return oblique_factory(flipped=request.param == "oblique_flipped")


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc, indent=2))
    return path


def pesf_doc(
    space: str, positions: np.ndarray, signs: list[bool] = SIGNS, name: str = "liver", value: int = 5
):
    points = [
        {"position": [float(v) for v in p], "positive": s} for p, s in zip(positions, signs, strict=True)
    ]
    return {"space": space, "organs": [{"name": name, "value": value, "points": points}]}


def slicer_markups(system: str, positions: np.ndarray, name: str | None = "liver", **point_fields) -> dict:
    """A point list as Slicer 5 saves it (abridged display section)."""
    markup: dict[str, Any] = {
        "type": "Fiducial",
        "coordinateSystem": system,
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(positions),
        "controlPoints": [
            {
                "id": str(n),
                "label": f"{name or 'F'}-{n}",
                "description": "",
                "associatedNodeID": "vtkMRMLScalarVolumeNode1",
                "position": [float(v) for v in p],
                "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
                "selected": True,
                "locked": False,
                "visibility": True,
                "positionStatus": "defined",
                **point_fields,
            }
            for n, p in enumerate(positions, start=1)
        ],
        "measurements": [],
        "display": {"visibility": True, "opacity": 1.0, "color": [0.4, 1.0, 1.0], "glyphType": "Sphere3D"},
    }
    if name is not None:
        markup["name"] = name
    return {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
        "Schema/markups-schema-v1.0.3.json#",
        "markups": [markup],
    }


def points_of(prompts: list[OrganPrompt], name: str = "liver") -> np.ndarray:
    organ = next(o for o in prompts if o.name == name)
    return np.array([p.position_ijk for p in organ.points])


# --------------------------------------------------------------------------- same point, every space


@pytest.mark.parametrize("space", ["IJK", "LPS", "RAS"])
def test_pesf_json_in_every_space_gives_the_same_voxel_indices(
    image: Volume, space: str, tmp_path: Path
) -> None:
    lps = image.index_to_lps(POINTS_IJK)
    positions = {"IJK": POINTS_IJK, "LPS": lps, "RAS": lps_to_ras(lps)}[space]
    prompts = load_prompts(write_json(tmp_path / "p.json", pesf_doc(space, positions)), image)
    assert [(o.name, o.value) for o in prompts] == [("liver", 5)]
    np.testing.assert_allclose(points_of(prompts), POINTS_IJK, atol=1e-6)
    assert [p.positive for p in prompts[0].points] == SIGNS


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_slicer_markups_in_lps_and_ras_give_the_same_voxel_indices(
    image: Volume, system: str, tmp_path: Path
) -> None:
    lps = image.index_to_lps(POINTS_IJK)
    positions = lps if system == "LPS" else lps_to_ras(lps)
    path = write_json(tmp_path / "liver.mrk.json", slicer_markups(system, positions))
    prompts = load_prompts(path, image)
    assert [(o.name, o.value) for o in prompts] == [("liver", 1)]
    np.testing.assert_allclose(points_of(prompts), POINTS_IJK, atol=1e-6)
    assert all(p.positive for p in prompts[0].points)


def test_real_ct_point_maps_to_the_expected_voxel(ct_volume: Volume, tmp_path: Path) -> None:
    # The CT header is RAS-oriented: i runs to the patient's right (-L), j to anterior (-P).
    ijk = np.array([60.0, 50.0, 15.0])
    lps = ct_volume.origin + np.array([-60.0 * 3, -50.0 * 3, 15.0 * 3])
    np.testing.assert_allclose(ct_volume.index_to_lps(ijk), lps, atol=1e-6)
    ras = lps_to_ras(lps)
    path = write_json(tmp_path / "p.json", pesf_doc("RAS", ras[None], [True]))
    np.testing.assert_allclose(points_of(load_prompts(path, ct_volume))[0], ijk, atol=1e-6)


@pytest.mark.parametrize("space", ["IJK", "LPS", "RAS"])
def test_save_prompts_round_trip(image: Volume, space: str, tmp_path: Path, leftover_files) -> None:
    organs = [
        OrganPrompt("liver", 5, [PromptPoint(p, s) for p, s in zip(POINTS_IJK, SIGNS, strict=True)]),
        OrganPrompt("spleen", 1, [PromptPoint(POINTS_IJK[1])]),
    ]
    path = save_prompts(tmp_path / "prompts.json", organs, image, space=space)
    assert json.loads(path.read_text())["space"] == space
    back = load_prompts(path, image)
    assert [(o.name, o.value) for o in back] == [("liver", 5), ("spleen", 1)]
    np.testing.assert_allclose(points_of(back), POINTS_IJK, atol=1e-6)
    assert [p.positive for p in back[0].points] == SIGNS
    assert leftover_files(tmp_path) == []


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_save_markups_round_trip_keeps_negative_points(image: Volume, system: str, tmp_path: Path) -> None:
    organ = OrganPrompt("kidney_left", 3, [PromptPoint(p, s) for p, s in zip(POINTS_IJK, SIGNS, strict=True)])
    path = save_markups(tmp_path / "kidney.mrk.json", organ, image, coordinate_system=system)
    doc = json.loads(path.read_text())
    markup = doc["markups"][0]
    assert doc["@schema"].endswith("markups-schema-v1.0.3.json#")
    assert (
        markup["type"] == "Fiducial"
        and markup["coordinateSystem"] == system
        and markup["name"] == "kidney_left"
    )
    assert [cp["label"].startswith("-") for cp in markup["controlPoints"]] == [not s for s in SIGNS]
    back = load_prompts(path, image, values={"kidney_left": 3})
    assert [(o.name, o.value) for o in back] == [("kidney_left", 3)]
    np.testing.assert_allclose(points_of(back, "kidney_left"), POINTS_IJK, atol=1e-6)
    assert [p.positive for p in back[0].points] == SIGNS


# --------------------------------------------------------------------------- markups conventions


def test_markups_negative_conventions_and_merging(ct_volume: Volume, tmp_path: Path) -> None:
    lps = ct_volume.index_to_lps(POINTS_IJK)
    doc = slicer_markups("LPS", lps[:2], name="liver")
    doc["markups"][0]["controlPoints"][1]["description"] = "negative"
    doc["markups"].append(slicer_markups("LPS", lps[2:3], name="liver-negative")["markups"][0])
    doc["markups"].append(slicer_markups("RAS", lps_to_ras(lps[3:4]), name="spleen")["markups"][0])
    doc["markups"][-1]["controlPoints"].append(
        dict(doc["markups"][-1]["controlPoints"][0], label="-spleen-2")
    )
    undefined = dict(doc["markups"][0]["controlPoints"][0], positionStatus="undefined", position=[1e6, 0, 0])
    doc["markups"][0]["controlPoints"].append(undefined)
    prompts = load_prompts(write_json(tmp_path / "case.mrk.json", doc), ct_volume)
    assert [(o.name, o.value) for o in prompts] == [("liver", 1), ("spleen", 2)]
    assert [p.positive for p in prompts[0].points] == [True, False, False]
    np.testing.assert_allclose(points_of(prompts)[2], POINTS_IJK[2], atol=1e-6)
    assert [p.positive for p in prompts[1].points] == [True, False]
    assert prompts[1].positive_points.shape == (1, 3) and prompts[1].negative_points.shape == (1, 3)


def test_unnamed_markups_take_the_file_name_and_files_merge(ct_volume: Volume, tmp_path: Path) -> None:
    lps = ct_volume.index_to_lps(POINTS_IJK)
    a = write_json(tmp_path / "pancreas.mrk.json", slicer_markups("LPS", lps[:1], name=None))
    b = write_json(tmp_path / "pancreas_negative.mrk.json", slicer_markups("LPS", lps[1:2], name=None))
    c = write_json(tmp_path / "p.json", pesf_doc("IJK", POINTS_IJK[2:3], [True], name="liver", value=1))
    prompts = load_prompts([a, b, c], ct_volume, values={"pancreas": 7})
    assert [(o.name, o.value) for o in prompts] == [("pancreas", 7), ("liver", 1)]
    assert [p.positive for p in prompts[0].points] == [True, False]
    # without explicit values, markups organs take the lowest values not used by the PESF file
    prompts = load_prompts([c, a], ct_volume)
    assert [(o.name, o.value) for o in prompts] == [("liver", 1), ("pancreas", 2)]


def test_markups_in_micrometres_and_legacy_fcsv(ct_volume: Volume, tmp_path: Path) -> None:
    lps = ct_volume.index_to_lps(POINTS_IJK[:2])
    doc = slicer_markups("LPS", lps * 1000.0)
    doc["markups"][0]["coordinateUnits"] = "um"
    np.testing.assert_allclose(
        points_of(load_prompts(write_json(tmp_path / "liver.mrk.json", doc), ct_volume)),
        POINTS_IJK[:2],
        atol=1e-6,
    )
    ras = lps_to_ras(lps)
    rows = [
        f"{n},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,liver-{n},,vtkMRMLScalarVolumeNode1"
        for n, p in enumerate(ras, 1)
    ]
    fcsv = tmp_path / "liver.fcsv"
    fcsv.write_text(
        "# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n" + "\n".join(rows) + "\n"
    )
    prompts = load_prompts(fcsv, ct_volume)
    assert prompts[0].name == "liver"
    np.testing.assert_allclose(points_of(prompts), POINTS_IJK[:2], atol=1e-6)


# --------------------------------------------------------------------------- bad input


def _organ(**fields) -> dict:
    return {
        "space": "IJK",
        "organs": [{"name": "liver", "value": 1, "points": [{"position": [1, 2, 3]}], **fields}],
    }


BAD_FILES = [
    ("empty", "", ["is empty"]),
    ("blank", "  \n ", ["is empty"]),
    ("malformed", '{"space": "IJK", "organs": [', ["not valid JSON", "line 1"]),
    ("list", "[1, 2]", ["neither a PESF prompt file"]),
    ("no_space", {"organs": []}, ["has no 'space'"]),
    ("bad_space", {"space": "XYZ", "organs": []}, ["unknown space 'XYZ'", "IJK, LPS or RAS"]),
    ("no_organs", {"space": "LPS", "organs": []}, ["has no organs"]),
    ("no_name", {"space": "IJK", "organs": [{"value": 1, "points": []}]}, ["organ 1", "has no 'name'"]),
    ("no_value", {"space": "IJK", "organs": [{"name": "liver", "points": []}]}, ["has no 'value'"]),
    ("no_points", {"space": "IJK", "organs": [{"name": "liver", "value": 1}]}, ["has no 'points'"]),
    ("zero_value", _organ(value=0), ["'liver'", "value 0", "from 1 to 65535"]),
    ("negative_value", _organ(value=-3), ["value -3"]),
    ("fraction_value", _organ(value=1.5), ["value 1.5", "whole number"]),
    ("bool_value", _organ(value=True), ["value True"]),
    ("no_position", _organ(points=[{"positive": True}]), ["point 1 of organ 'liver'", "'position'"]),
    ("short_position", _organ(points=[{"position": [1, 2]}]), ["three numbers"]),
    ("text_position", _organ(points=[{"position": [1, "a", 3]}]), ["three finite numbers"]),
    (
        "nan_position",
        '{"space":"IJK","organs":[{"name":"liver","value":1,"points":[{"position":[1,NaN,3]}]}]}',
        ["finite"],
    ),
    (
        "bad_positive",
        _organ(points=[{"position": [1, 2, 3], "positive": "yes"}]),
        ["positive='yes'", "true/false"],
    ),
    (
        "only_negative",
        _organ(points=[{"position": [1, 2, 3], "positive": False}]),
        ["'liver'", "no positive point"],
    ),
    ("no_point", _organ(points=[]), ["no positive point"]),
    (
        "duplicate_name",
        {"space": "IJK", "organs": [_organ()["organs"][0], dict(_organ()["organs"][0], value=2)]},
        ["'liver' appears twice"],
    ),
    (
        "duplicate_value",
        {"space": "IJK", "organs": [_organ()["organs"][0], dict(_organ()["organs"][0], name="spleen")]},
        ["'liver' and 'spleen' in", "both have value 1"],
    ),
    ("roi", {"markups": [{"type": "ROI", "controlPoints": []}]}, ["is a ROI", "Fiducial"]),
    (
        "bad_system",
        {"markups": [{"type": "Fiducial", "coordinateSystem": "XYZ"}]},
        ["coordinate system 'XYZ'"],
    ),
    ("no_markups", {"markups": []}, ["holds no markups"]),
    (
        "markup_no_points",
        {"markups": [{"type": "Fiducial", "name": "liver", "controlPoints": []}]},
        ["no positive point"],
    ),
]


@pytest.mark.parametrize(("name", "content", "words"), BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_prompt_files(
    name: str, content: Any, words: list[str], ct_volume: Volume, tmp_path: Path, one_line_error
) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(PesfError) as excinfo:
        load_prompts(path, ct_volume)
    one_line_error(excinfo, str(path), *words)


@pytest.mark.parametrize("space", ["IJK", "LPS", "RAS"])
def test_point_outside_the_image_names_organ_point_and_extent(
    ct_volume: Volume, space: str, tmp_path: Path, one_line_error
) -> None:
    ijk = np.array([[60.0, 50.0, 10.0], [60.0, 50.0, 30.2]])  # the second is past the last slice (29)
    lps = ct_volume.index_to_lps(ijk)
    positions = {"IJK": ijk, "LPS": lps, "RAS": lps_to_ras(lps)}[space]
    path = write_json(tmp_path / "p.json", pesf_doc(space, positions, [True, True], name="spleen", value=1))
    with pytest.raises(PesfError) as excinfo:
        load_prompts(path, ct_volume)
    message = one_line_error(excinfo, "point 2 of organ 'spleen'", "outside the image", "30.2")
    assert (
        ("voxel indices 0..121, 0..100, 0..29" in message)
        if space == "IJK"
        else ("122x101x30 voxels" in message)
    )


def test_half_a_voxel_margin_is_inside(ct_volume: Volume, tmp_path: Path) -> None:
    ijk = np.array([[-0.5, -0.5, -0.5], [121.5, 100.5, 29.5]])
    path = write_json(tmp_path / "p.json", pesf_doc("IJK", ijk, [True, True]))
    np.testing.assert_allclose(points_of(load_prompts(path, ct_volume)), ijk)


def test_swapped_coordinate_system_gets_a_hint(ct_volume: Volume, tmp_path: Path, one_line_error) -> None:
    ras = lps_to_ras(ct_volume.index_to_lps(np.array([[5.0, 5.0, 5.0]])))
    path = write_json(tmp_path / "liver.mrk.json", slicer_markups("LPS", ras))  # RAS numbers labelled LPS
    with pytest.raises(PesfError) as excinfo:
        load_prompts(path, ct_volume)
    one_line_error(excinfo, "point 'liver-1' of organ 'liver'", "would be inside if the coordinates were RAS")


def test_missing_paths_and_conflicting_values(ct_volume: Volume, tmp_path: Path, one_line_error) -> None:
    with pytest.raises(PesfError) as excinfo:
        load_prompts(tmp_path / "nope.json", ct_volume)
    one_line_error(excinfo, "does not exist")
    with pytest.raises(PesfError, match="is a folder"):
        load_prompts(tmp_path, ct_volume)
    with pytest.raises(PesfError, match="no prompt file given"):
        load_prompts([], ct_volume)
    a = write_json(tmp_path / "a.json", pesf_doc("IJK", POINTS_IJK[:1], [True], value=1))
    b = write_json(tmp_path / "b.json", pesf_doc("IJK", POINTS_IJK[:1], [True], value=2))
    with pytest.raises(PesfError) as excinfo:
        load_prompts([a, b], ct_volume)
    one_line_error(excinfo, "'liver' has value 1", "and 2")
    assert load_prompts(a, ct_volume, values={"liver": 2, "spleen": 9})[0].value == 2


def test_writers_refuse_bad_arguments(ct_volume: Volume, tmp_path: Path, leftover_files) -> None:
    organ = OrganPrompt("liver", 1, [PromptPoint(POINTS_IJK[0])])
    with pytest.raises(PesfError, match="must end in .mrk.json"):
        save_markups(tmp_path / "liver.json", organ, ct_volume)
    with pytest.raises(PesfError, match="coordinate system"):
        save_markups(tmp_path / "liver.mrk.json", organ, ct_volume, coordinate_system="XYZ")
    with pytest.raises(PesfError, match="unknown prompt space"):
        save_prompts(tmp_path / "p.json", [organ], ct_volume, space="voxel")
    with pytest.raises(PesfError, match="output folder"):
        save_prompts(tmp_path / "missing" / "p.json", [organ], ct_volume)
    assert list(tmp_path.iterdir()) == []
