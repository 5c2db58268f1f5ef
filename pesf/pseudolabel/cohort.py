"""Pseudo-labelling of many cases: a folder of images or cases of the store, resumable, sharded over ranks.

:func:`pseudo_label_folder` runs :func:`~pesf.pseudolabel.run.pseudo_label_case` on every case. Images of a
folder become cases of the store (named after their files) with an empty label map and no organs. A case whose
requested organs are all done is skipped without being read, and a case is written at once or not at all, so
rerunning after an interruption continues where the last run stopped.

Under ``torchrun`` (``WORLD_SIZE`` > 1) rank ``r`` takes cases ``r, r + W, ...`` and writes only those (the
store serialises writers); the case reports are gathered so every rank returns the whole report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pesf.errors import PesfError
from pesf.io import read_labelmap, read_volume
from pesf.io.atomic import split_extension
from pesf.io.image import READ_EXTENSIONS
from pesf.pseudolabel.run import (
    ProgressCallback,
    default_threshold,
    model_identity,
    pseudo_label_case,
    skip_reasons,
)

__all__ = ["CaseJob", "plan_cases", "pseudo_label_folder", "summarize"]

logger = logging.getLogger(__name__)

_PROMPT_EXTENSIONS = (".json", ".mrk.json", ".fcsv")


@dataclass
class CaseJob:
    """One case of a pseudo-labelling run.

    Attributes:
        case_id: the case id in the store.
        image_path: the image to import when the case is not in the store yet (``--images``).
        label_path: its source label map, if any.
        prompts_path: its prompt file, if any.
    """

    case_id: str
    image_path: Path | None = None
    label_path: Path | None = None
    prompts_path: Path | None = None


def _is_image(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return any(f.is_file() for f in path.iterdir())  # a DICOM series folder
    return split_extension(path.name)[1].lower() in READ_EXTENSIONS


def _is_prompt_file(path: Path) -> bool:
    return path.is_file() and split_extension(path.name)[1].lower() in _PROMPT_EXTENSIONS


def _by_case_id(folder: Path, accept: Callable[[Path], bool], what: str) -> dict[str, Path]:
    from pesf.train.store import case_id_from_name

    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not accept(path):
            continue
        cid = case_id_from_name(path.name)
        if cid in found:
            raise PesfError(
                f"{what} {found[cid].name} and {path.name} in {folder} both name case {cid!r}; keep one"
            )
        found[cid] = path
    return found


def _match(
    files: Path | None, case_ids: list[str], what: str, flag: str, required: bool = True
) -> dict[str, Path]:
    """Case id to file: one file for one case, or a folder of files named like the cases (every case needs
    one when ``required``)."""
    if files is None:
        return {}
    if not files.exists():
        raise PesfError(f"{what} {files} does not exist; check the path")
    if not files.is_dir():
        if len(case_ids) != 1:
            raise PesfError(
                f"{flag} {files} is one file but {len(case_ids)} cases are selected; "
                f"give a folder of files named like the cases"
            )
        return {case_ids[0]: files}
    found = _by_case_id(files, _is_prompt_file if what == "prompt file" else _is_image, what)
    missing = [c for c in case_ids if c not in found]
    if missing and required:
        listed = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise PesfError(f"{files} has no {what} named like case {listed}; name them like the images")
    return {c: found[c] for c in case_ids if c in found}


def plan_cases(
    store: Any,
    *,
    images_dir: str | os.PathLike[str] | None = None,
    case_ids: Sequence[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    prompts: str | os.PathLike[str] | None = None,
    source: str = "label",
) -> list[CaseJob]:
    """The cases of a run, with their files, checked before any work.

    Args:
        store: the case store.
        images_dir: a folder of images (NIfTI, NRRD, MHA files or DICOM series subfolders); each becomes a
            case named after its file (see :func:`~pesf.train.store.case_id_from_name`).
        case_ids: cases of the store (``None`` with no ``images_dir``: every case).
        labels: a label map (one case) or a folder of label maps named like the cases (for ``source="model"``
            a fallback, so cases may lack one).
        prompts: a prompt file (one case) or a folder of prompt files named like the cases.
        source: the prompt source, ``"label"``, ``"model"`` or ``"points"``.

    Raises:
        PesfError: unknown case ids, an images folder without images, missing label maps or prompt files.
    """
    paths: dict[str, Path] = {}
    if images_dir is not None:
        folder = Path(images_dir)
        if not folder.is_dir():
            raise PesfError(f"images folder {folder} does not exist or is not a folder; check the path")
        others = {Path(p).resolve() for p in (labels, prompts) if p is not None}
        paths = _by_case_id(folder, lambda p: _is_image(p) and p.resolve() not in others, "image")
        if not paths:
            raise PesfError(f"{folder} holds no images (NIfTI, NRRD, MHA files or DICOM series folders)")
        ids = list(paths)
    elif case_ids is not None:
        ids = list(dict.fromkeys(case_ids))
        for cid in ids:
            store.get(cid)  # raises for an unknown id
    else:
        ids = store.case_ids()
        if not ids:
            raise PesfError(f"workspace {store.root} has no cases; add some, or give --images")
    label_paths = _match(
        Path(labels) if labels is not None else None, ids, "label map", "--from-label", source != "model"
    )
    prompt_paths = _match(Path(prompts) if prompts is not None else None, ids, "prompt file", "--points")
    return [CaseJob(cid, paths.get(cid), label_paths.get(cid), prompt_paths.get(cid)) for cid in ids]


def _run_job(
    store: Any, job: CaseJob, organs: dict[str, int] | None, model: Any, options: dict[str, Any]
) -> dict:
    """Import the job's image if the case is new, read its source label map, and pseudo-label it."""
    new = job.image_path is not None and not store.has_case(job.case_id)
    if not new and organs is not None:
        author, version = model_identity(model)
        record = store.get(job.case_id)
        reasons = skip_reasons(
            record,
            organs,
            options["source"],
            options.get("author") or author,
            version,
            options.get("redo", False),
        )
        if len(reasons) == len(organs):  # resuming: nothing to do, nothing to read
            return pseudo_label_case(store, job.case_id, organs, model, **options)
    image = read_volume(job.image_path) if new else None  # type: ignore[arg-type]
    source_label = None
    if job.label_path is not None:
        if image is None:
            image = store.load_image(job.case_id)
        source_label = read_labelmap(job.label_path, like=image)[0]
    if new:
        assert image is not None
        store.add_case(image, image.with_array(np.zeros(image.shape, np.uint8)), {}, case_id=job.case_id)
        logger.info("imported %s as case %s", job.image_path, job.case_id)
    return pseudo_label_case(
        store,
        job.case_id,
        organs,
        model,
        source_label=source_label,
        prompts_file=job.prompts_path,
        image=image,
        **options,
    )


def _gather(dist_ctx: Any, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if dist_ctx is None or not getattr(dist_ctx, "distributed", False):
        return entries
    import torch.distributed as dist

    parts: list[Any] = [None] * dist_ctx.world_size
    dist.all_gather_object(parts, entries)
    return sorted((e for part in parts for e in part), key=lambda e: e["index"])


def pseudo_label_folder(
    workspace: str | os.PathLike[str],
    organs: dict[str, int] | None,
    model: Any,
    *,
    images_dir: str | os.PathLike[str] | None = None,
    case_ids: Sequence[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    prompts: str | os.PathLike[str] | None = None,
    source: str = "label",
    strict: bool | None = None,
    dist_ctx: Any = None,
    progress: ProgressCallback | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Pseudo-label many cases, resumably, sharded across ``torchrun`` ranks.

    Cases come from ``images_dir`` (imported into the store when new), from ``case_ids``, or are all cases
    of the store. A case whose requested organs are all done (accepted, or pseudo-labelled when not redoing)
    is skipped without reading it, so a rerun after an interruption continues where the last one stopped.
    A case with bad input (e.g. a label map on another grid) is reported and left unwritten; the run goes on.

    Args:
        workspace: the workspace folder (must exist).
        organs: organ name to label value (``None`` with ``source="points"``: the prompt files' organs).
        model: the promptable model.
        images_dir, case_ids, labels, prompts: as in :func:`plan_cases`.
        source: ``"label"``, ``"model"`` or ``"points"``.
        strict: organs absent from a case's source make the case fail (default: only for ``case_ids``);
            otherwise they are reported as failed organs.
        dist_ctx: the :class:`~pesf.train.distributed.DistContext` of a ``torchrun`` launch, or ``None``.
        progress: called as ``progress(cases_done, cases_total, case_id)`` for this rank's cases.
        **options: further keywords of :func:`pseudo_label_case` (``redo``, ``confidence_threshold``, ...).

    Returns:
        ``{"workspace", "source", "organs", "model", "threshold", "world_size", "cases", "summary"}`` (the
        same on every rank); ``cases`` holds the reports of :func:`pseudo_label_case` plus ``index``,
        ``rank`` and, for a case that failed, ``error``.
    """
    from pesf.train.store import CaseStore

    store = CaseStore(workspace)
    jobs = plan_cases(
        store, images_dir=images_dir, case_ids=case_ids, labels=labels, prompts=prompts, source=source
    )
    if source == "label" and labels is None:
        raise PesfError("pseudo-labelling from a label map needs the label map; give --from-label")
    if source == "points" and prompts is None:
        raise PesfError("pseudo-labelling from points needs a prompt file; give --points")
    strict = case_ids is not None if strict is None else strict
    author, version = model_identity(model)
    options.setdefault("author", author)
    rank = dist_ctx.rank if dist_ctx is not None else 0
    world = dist_ctx.world_size if dist_ctx is not None else 1
    indexed = list(enumerate(jobs))
    mine = dist_ctx.shard(indexed) if dist_ctx is not None else indexed
    entries = []
    for done, (index, job) in enumerate(mine):
        if progress is not None:
            progress(done, len(mine), job.case_id)
        try:
            entry = _run_job(store, job, organs, model, {"source": source, "strict": strict, **options})
        except PesfError as exc:
            entry = {"case_id": job.case_id, "written": False, "error": str(exc), "organs": {}}
            logger.warning("case %s: %s", job.case_id, exc)
        entries.append({**entry, "index": index, "rank": rank})
    if progress is not None:
        progress(len(mine), len(mine), "done")
    cases = _gather(dist_ctx, entries)
    threshold = options.get("confidence_threshold")
    return {
        "workspace": str(store.root),
        "source": source,
        "organs": organs,
        "model": {"author": options["author"], "model_version": version},
        "threshold": default_threshold(model) if threshold is None else float(threshold),
        "world_size": world,
        "cases": cases,
        "summary": summarize(cases),
    }


def summarize(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of a run's case reports, and which organs fell below the threshold or failed."""
    organs = [(c["case_id"], n, e) for c in cases for n, e in c.get("organs", {}).items()]
    return {
        "cases": len(cases),
        "cases_written": sum(1 for c in cases if c.get("written")),
        "cases_failed": [c["case_id"] for c in cases if c.get("error")],
        "organs_written": sum(1 for _, _, e in organs if e["status"] == "pseudo"),
        "organs_skipped": sum(1 for _, _, e in organs if e["status"] == "skipped"),
        "organs_failed": [f"{c}/{n}" for c, n, e in organs if e["status"] == "failed"],
        "below_threshold": [f"{c}/{n}" for c, n, e in organs if e.get("below_threshold")],
    }
