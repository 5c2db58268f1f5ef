"""``pesf demo``: the whole engine on the bundled sample CT, start to finish, in a few minutes on a CPU.

1. Load the sample CT (``A_ct_full``), its reference labels (TotalSegmentator) and the model.
2. Segment several organs with the simulated user of ``pesf evaluate``: a first click inside the organ, then
   up to ``clicks`` corrective clicks in the largest error; Dice against the reference after every click.
3. Write the label map (``segmentation.nii.gz``), a Slicer segmentation with names and colours
   (``segmentation.seg.nrrd``), the clicks as Slicer point lists (``clicks/<organ>.mrk.json``) and one PNG
   per organ (``overlays/<organ>.png``: axial and coronal slices with outline and voxel confidence).
4. One PESF round (see :mod:`pesf.demo.pesf_round`): pseudo-label an organ nobody annotated, filter it by
   confidence, fine-tune a few steps, and compare that organ's Dice before and after with the same clicks.
5. Write ``report.json``.

Every file is written atomically. The logic reports through :class:`DemoCallbacks`; whoever owns the screen
(the ``pesf demo`` command) shows it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pesf.errors import PesfError

__all__ = [
    "DEMO_ORGANS",
    "DemoCallbacks",
    "DemoOptions",
    "DemoResult",
    "format_demo_table",
    "run_demo",
    "sample_case",
]

DEMO_ORGANS: dict[str, int] = {
    "liver": 5,
    "spleen": 1,
    "kidney_right": 2,
    "kidney_left": 3,
    "stomach": 6,
    "aorta": 52,
    "inferior_vena_cava": 63,
}
"""The organs the demo segments and their values in the sample CT's reference labels (TotalSegmentator)."""

STAGES = 5


@dataclass
class DemoCallbacks:
    """How the demo reports. Every callback is optional.

    Attributes:
        stage: ``stage(number, total, text)`` when a stage starts.
        progress: ``progress(done, total, text)`` within a stage (clicks, files, steps).
        info: ``info(text)``: a line worth showing (results of a step).
        train_progress: show the trainer's own progress bar (on a terminal).
    """

    stage: Callable[[int, int, str], None] | None = None
    progress: Callable[[int, int, str], None] | None = None
    info: Callable[[str], None] | None = None
    train_progress: bool = False

    def _stage(self, number: int, text: str) -> None:
        if self.stage is not None:
            self.stage(number, STAGES, text)

    def _progress(self, done: int, total: int, text: str) -> None:
        if self.progress is not None:
            self.progress(done, total, text)

    def _info(self, text: str) -> None:
        if self.info is not None:
            self.info(text)


@dataclass
class DemoOptions:
    """What the demo does.

    Attributes:
        out: output folder (created if missing).
        model: model name or checkpoint path.
        clicks: corrective clicks after the first one, per organ (so at most ``1 + clicks`` clicks).
        skip_training: stop the PESF round after pseudo-labelling and filtering (no fine-tuning).
        organs: organ name to reference label value.
        train_steps: optimizer steps of the fine-tuning.
        seed: seed of the click simulation.
    """

    out: Path = Path("pesf-demo-output")
    model: str = "default"
    clicks: int = 3
    skip_training: bool = False
    organs: dict[str, int] = field(default_factory=lambda: dict(DEMO_ORGANS))
    train_steps: int = 6
    seed: int = 0


@dataclass
class DemoResult:
    """What the demo made: the report (also in ``report.json``) and the files it wrote."""

    report: dict[str, Any]
    files: list[Path]
    out: Path


def sample_case() -> dict[str, Path]:
    """Paths of the demo's inputs: ``image``, ``label`` and ``prompts`` of the bundled sample CT ``A_ct_full``.

    Raises:
        PesfError: a file is missing (a broken installation).
    """
    from pesf.resources import sample_data_dir

    folder = sample_data_dir() / "A_ts_ct"
    paths = {
        "image": folder / "A_ct_full_image.nii.gz",
        "label": folder / "A_ct_full_seg_total_fast.nii.gz",
        "prompts": folder / "A_ct_full_prompts.json",
    }
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise PesfError(f"the bundled sample data is incomplete: {', '.join(missing)} not found")
    return paths


def _model_identity(model: Any) -> dict[str, Any]:
    from pesf.models import model_info

    info = model_info(model)
    return {k: info.get(k) for k in ("name", "source", "trained")}


def _prepare_output(out: Path) -> Path:
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise PesfError(f"the output folder {out} is a file; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "overlays").mkdir(exist_ok=True)
        (out / "clicks").mkdir(exist_ok=True)
    except OSError as exc:
        raise PesfError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    return out


def _segment(options: DemoOptions, image: Any, label: Any, model: Any, cb: DemoCallbacks):
    """Stage 2: the simulated clicks; returns the evaluation report and the session holding the results."""
    from pesf.eval import evaluate_organs
    from pesf.interactive import InteractiveSession

    session = InteractiveSession(model, image)
    report = evaluate_organs(
        lambda: session,
        label.array,
        options.organs,
        spacing=image.spacing,
        n_clicks=1 + options.clicks,
        seed=options.seed,
        progress=cb._progress,
    )
    return report, session


def _organ_rows(evaluation: dict[str, Any], session: Any, spacing: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for name, organ in evaluation["organs"].items():
        made = len(organ["clicks"])
        result = session.result(name)
        rows.append(
            {
                "organ": name,
                "value": organ["value"],
                "clicks": made,
                "dice": round(float(organ["dice"][made - 1]), 4),
                "dice_first_click": round(float(organ["dice"][0]), 4),
                "confidence": None
                if organ["confidence"][made - 1] is None
                else round(float(organ["confidence"][made - 1]), 4),
                "seconds_per_click": round(float(np.mean(organ["latency_s"][:made])), 4),
                "ml": round(result.volume_ml(spacing), 2),
            }
        )
    return rows


def format_demo_table(rows: list[dict[str, Any]]) -> str:
    """The demo's table: organ, clicks, Dice after the first and the last click, confidence, time per click."""
    header = ["organ", "clicks", "Dice@1", "Dice", "confidence", "s/click", "ml"]
    cells = [
        [
            r["organ"],
            str(r["clicks"]),
            f"{r['dice_first_click']:.3f}",
            f"{r['dice']:.3f}",
            "-" if r["confidence"] is None else f"{r['confidence']:.3f}",
            f"{r['seconds_per_click']:.2f}",
            f"{r['ml']:.1f}",
        ]
        for r in rows
    ]
    if rows:
        cells.append(
            [
                "mean",
                f"{np.mean([r['clicks'] for r in rows]):.1f}",
                f"{np.mean([r['dice_first_click'] for r in rows]):.3f}",
                f"{np.mean([r['dice'] for r in rows]):.3f}",
                "-",
                f"{np.mean([r['seconds_per_click'] for r in rows]):.2f}",
                "",
            ]
        )
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    rule = "-" * len(line(header))
    body = [line(r) for r in cells[:-1]]
    return "\n".join([line(header), rule, *body, rule, line(cells[-1])] if rows else [line(header), rule])


def _write_outputs(
    out: Path,
    image: Any,
    label: Any,
    evaluation: dict[str, Any],
    session: Any,
    organs: dict[str, int],
    cb: DemoCallbacks,
) -> dict[str, Any]:
    """Stage 3: label map, Slicer segmentation, click lists and overlays; returns their paths by kind."""
    from pesf.demo.overlays import OrganOverlay, write_organ_overlay
    from pesf.io import OrganPrompt, PromptPoint, default_segment_info, save_markups, write_labelmap

    names = list(organs)
    total = 2 + 2 * len(names)
    done = 0
    labels = image.with_array(session.label_map(organs))
    segments = {v: default_segment_info(n, v) for n, v in organs.items()}
    files: dict[str, Any] = {"overlays": {}, "clicks": {}}
    files["labelmap"] = write_labelmap(labels, out / "segmentation.nii.gz")
    done += 1
    cb._progress(done, total, "segmentation.nii.gz")
    files["segmentation"] = write_labelmap(labels, out / "segmentation.seg.nrrd", segments)
    done += 1
    cb._progress(done, total, "segmentation.seg.nrrd")
    for name in names:
        organ = evaluation["organs"][name]
        clicks = [(np.array(c[:3]), bool(c[3])) for c in organ["clicks"]]
        prompt = OrganPrompt(name, organs[name], [PromptPoint(ijk.astype(float), pos) for ijk, pos in clicks])
        files["clicks"][name] = save_markups(out / "clicks" / f"{name}.mrk.json", prompt, image)
        done += 1
        cb._progress(done, total, f"clicks/{name}.mrk.json")
        result = session.result(name)
        made = len(clicks)
        confidence = organ["confidence"][made - 1]
        subtitle = (
            f"Dice {organ['dice'][made - 1]:.3f} after {made} click{'s' if made != 1 else ''}, "
            f"confidence {'-' if confidence is None else f'{confidence:.2f}'}, {result.volume_ml(image.spacing):.0f} ml"
        )
        overlay = OrganOverlay(
            name=name,
            mask=result.full_mask(),
            confidence=result.full_confidence_map(),
            reference=label.array == organs[name],
            clicks=clicks,
            subtitle=subtitle,
        )
        path = out / "overlays" / f"{name}.png"
        write_organ_overlay(path, image, overlay)
        files["overlays"][name] = path
        done += 1
        cb._progress(done, total, f"overlays/{name}.png")
    return files


def _plain_paths(value: Any, root: Path) -> Any:
    """Paths as strings relative to the output folder (for the JSON report)."""
    if isinstance(value, dict):
        return {k: _plain_paths(v, root) for k, v in value.items()}
    if isinstance(value, Path):
        try:
            return str(value.relative_to(root))
        except ValueError:
            return str(value)
    return value


def _flatten(files: dict[str, Any]) -> list[Path]:
    found: list[Path] = []
    for value in files.values():
        if isinstance(value, dict):
            found += _flatten(value)
        elif isinstance(value, Path):
            found.append(value)
    return found


def run_demo(options: DemoOptions, callbacks: DemoCallbacks | None = None) -> DemoResult:
    """Run the demo (see the module description) and return its report and files.

    Raises:
        PesfError: bad options, a missing sample file, an unusable model or output folder.
    """
    from pesf import __version__
    from pesf.demo.pesf_round import PesfRoundSettings, run_pesf_round
    from pesf.io import read_labelmap, read_volume, write_json_atomic
    from pesf.models import load_model

    cb = callbacks or DemoCallbacks()
    if options.clicks < 0:
        raise PesfError(
            f"--clicks must be 0 or more (corrective clicks after the first), got {options.clicks}"
        )
    started = time.perf_counter()
    timings: dict[str, float] = {}
    out = _prepare_output(options.out).resolve()
    inputs = sample_case()

    cb._stage(1, "loading the sample CT, its reference labels and the model")
    t0 = time.perf_counter()
    image = read_volume(inputs["image"])
    label, _ = read_labelmap(inputs["label"], like=image)
    model = load_model(options.model)
    timings["load_s"] = time.perf_counter() - t0
    cb._info(
        f"image {inputs['image'].name}: {'x'.join(map(str, image.shape))} voxels at "
        f"{'x'.join(f'{s:g}' for s in image.spacing)} mm; model {_model_identity(model)['source']}"
    )

    cb._stage(
        2, f"segmenting {len(options.organs)} organs: 1 click inside, then up to {options.clicks} corrective"
    )
    t0 = time.perf_counter()
    evaluation, session = _segment(options, image, label, model, cb)
    rows = _organ_rows(evaluation, session, image.spacing)
    timings["segment_s"] = time.perf_counter() - t0

    cb._stage(3, "writing the label map, the Slicer segmentation, the clicks and the overlays")
    t0 = time.perf_counter()
    files = _write_outputs(out, image, label, evaluation, session, options.organs, cb)
    timings["write_s"] = time.perf_counter() - t0
    report: dict[str, Any] = {
        "pesf_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "image": str(inputs["image"]),
        "reference": str(inputs["label"]),
        "reference_note": "TotalSegmentator labels: good reference labels, not manual ground truth",
        "model": _model_identity(model),
        "protocol": {
            "first_click": "inside the organ (most interior voxels)",
            "corrective_clicks": options.clicks,
            "seed": options.seed,
        },
        "table": rows,
        "evaluation": evaluation,
        "files": {},
        "pesf_round": None,
        "timings_s": timings,
    }
    files["report"] = out / "report.json"
    report["files"] = _plain_paths(files, out)
    write_json_atomic(files["report"], report)  # rewritten at the end; a failed round still leaves a report

    cb._stage(4, "PESF round: pseudo-label, filter by confidence, fine-tune, compare")
    t0 = time.perf_counter()
    settings = PesfRoundSettings(steps=options.train_steps, skip_training=options.skip_training)
    round_report = run_pesf_round(
        out / "workspace",
        image=image,
        label=label,
        organs=options.organs,
        model=model,
        model_ref=options.model,
        prompts_file=inputs["prompts"],
        before=evaluation,
        settings=settings,
        callbacks=cb,
    )
    timings["pesf_round_s"] = time.perf_counter() - t0
    report["pesf_round"] = round_report
    files["workspace"] = out / "workspace"

    cb._stage(5, "writing report.json")
    timings["total_s"] = time.perf_counter() - started
    report["files"] = _plain_paths(files, out)
    write_json_atomic(files["report"], report)
    return DemoResult(report=report, files=_flatten(files), out=out)
