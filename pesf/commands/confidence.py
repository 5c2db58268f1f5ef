"""``pesf train-confidence``: fit a model's PESF confidence module on the labelled cases of a workspace."""

from __future__ import annotations

import argparse
from typing import Any

from pesf.cli import register
from pesf.commands.common import check_output_path

__all__ = ["run_train_confidence"]


@register("train-confidence")
def run_train_confidence(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np
    from tqdm import tqdm

    from pesf.errors import PesfError
    from pesf.models import load_model, model_info, save_checkpoint
    from pesf.models.confidence import attach_confidence_module
    from pesf.train import CaseStore
    from pesf.train.confidence import train_confidence_module
    from pesf.train.samples import AugmentConfig, prepare_sample

    out = check_output_path(args.out, "model")
    variants = _variants(getattr(args, "variant", None) or [])
    if args.regions_per_organ < 1:
        raise PesfError(f"--regions-per-organ must be at least 1, got {args.regions_per_organ}")
    # regions as inference makes them: the first centred on a first click, the others augmented and
    # centred on one half of the time
    plain = dataclasses.replace(AugmentConfig.none(), click_center_prob=1.0)
    augmented, overrides = _augmentation(args.augmentation, {"click_center_prob": 0.5})
    store = CaseStore(args.workspace)
    samples = store.samples(("accepted",))
    if not samples:
        raise PesfError(
            f"the case store {args.workspace} has no accepted organs to learn from; add cases with `pesf cases add`"
        )
    model = load_model(args.model)
    rng = np.random.default_rng(args.seed)
    pairs = []
    for case_id, record in tqdm(samples, desc="regions", unit="organ", disable=None):
        data = store.load_case(case_id)
        for k in range(args.regions_per_organ):
            sample = prepare_sample(
                data.image,
                data.label,
                record.value,
                data.unknown,
                rng,
                config=augmented if k > 0 else plain,
                case_id=case_id,
                organ=record.name,
            )
            pairs.append((sample.image, sample.target))

    bar = tqdm(total=args.epochs, desc="confidence module", unit="epoch", disable=None)

    def progress(done: int, total: int, message: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(message)
        bar.refresh()

    module, metrics = train_confidence_module(
        model, pairs, epochs=args.epochs, seed=args.seed, progress=progress, target_dice=args.target_dice
    )
    bar.close()
    info = model_info(model)
    attach_confidence_module(
        model,
        module,
        {
            "threshold": float(metrics["threshold"]),
            "target_dice": args.target_dice,
            "val_spearman": metrics.get("val_spearman"),
            "val_mae": metrics.get("val_mae"),
            "val_mae_unmapped": metrics.get("val_mae_unmapped"),
            "val_mae_constant": metrics.get("val_mae_constant"),
            "trained_on": {
                "workspace": str(args.workspace),
                "organs": len(samples),
                "regions": len(pairs),
                "augmentation": overrides,
            },
        },
    )
    metadata = dict(model.metadata or {})
    source = getattr(args, "source", None) or info.get("source")
    metadata["source"] = f"{source}; confidence module trained on {len(pairs)} regions"
    if getattr(args, "modality", None):
        metadata["modality"] = args.modality
    if variants:
        metadata["variants"] = {**(metadata.get("variants") or {}), **variants}
    if getattr(args, "model_version", None):
        metadata["model_version"] = args.model_version
    save_checkpoint(model, out, metadata=metadata)
    spearman = metrics.get("val_spearman")
    unmapped = metrics.get("val_mae_unmapped")
    print(
        f"confidence module: validation MAE {metrics['val_mae']:.3f} (constant guess {metrics['val_mae_constant']:.3f}"
        + ("" if unmapped is None else f", network without its Dice map {unmapped:.3f}")
        + f"), Spearman {'n/a' if spearman is None else f'{spearman:.2f}'}, threshold {metrics['threshold']:.2f}"
    )
    print(f"wrote {out}")
    return 0


def _augmentation(path: str | None, base: dict) -> tuple[Any, dict]:
    """The augmented regions' settings: the training defaults with ``base`` and then the fields of the JSON
    object in ``path`` (if given) replaced; and those replaced fields."""
    from pesf.errors import PesfError
    from pesf.train.config import read_settings_file
    from pesf.train.samples import AugmentConfig

    if not path:
        return AugmentConfig.from_overrides(base), dict(base)
    overrides = read_settings_file(path, "augmentation file")
    try:
        merged = {**base, **overrides}
        return AugmentConfig.from_overrides(merged), merged
    except ValueError as exc:
        raise PesfError(f"augmentation file {path}: {exc}") from None


def _variants(items: list[str]) -> dict[str, str]:
    """``--variant MODALITY=MODEL`` options as ``{modality: model}`` (``MODALITY`` CT or MR, optionally
    followed by ``few-slice``: the keys of :mod:`pesf.models.variants`)."""
    from pesf.errors import PesfError

    variants = {}
    for item in items:
        scans, sep, model = item.partition("=")
        words = scans.split()
        modality = words[0].upper() if words else ""
        if (
            not sep
            or modality not in ("CT", "MR")
            or [w.lower() for w in words[1:]] not in ([], ["few-slice"])
            or not model.strip()
        ):
            raise PesfError(
                f"--variant {item!r}: write MODALITY=MODEL with MODALITY CT or MR (or 'CT few-slice', "
                "'MR few-slice'), e.g. MR=default-mr"
            )
        variants[modality + (" few-slice" if len(words) > 1 else "")] = model.strip()
    return variants
