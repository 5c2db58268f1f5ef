"""The PESF confidence module: shapes, training examples, learning, threshold, filtering, checkpoints, session."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pesf.models.checkpoint as checkpoint
from pesf.errors import PesfError
from pesf.eval.metrics import dice
from pesf.interactive import InteractiveSession, SessionConfig
from pesf.interactive.refine import RefineConfig
from pesf.interactive.resample import resample_affine
from pesf.interactive.roi import make_region
from pesf.io.volume import Volume
from pesf.models import CONFIGS, Sam3D, build_model, load_model, model_info, save_checkpoint
from pesf.models.checkpoint import read_checkpoint
from pesf.train.confidence import (
    ConfidenceConfig,
    ConfidenceModule,
    PerturbSettings,
    attach_confidence_module,
    calibrate_threshold,
    filter_pseudo_labels,
    fit_confidence_module,
    fit_dice_map,
    make_confidence_examples,
    train_confidence_module,
)

ORGANS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "stomach": 6, "aorta": 52}
OFFSETS_MM = ((0.0, 0.0, 0.0), (15.0, -10.0, 5.0))


def organ_pairs(
    image: Volume, labels: Volume, organs: list[str], offsets=OFFSETS_MM
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(region image, target)`` pairs: 128^3 regions near each organ's centre, target resampled onto them."""
    tensor = torch.from_numpy(np.ascontiguousarray(image.array, dtype=np.float32))
    pairs = []
    for organ in organs:
        mask = labels.array == ORGANS[organ]
        centre = image.index_to_lps(np.argwhere(mask).mean(axis=0))
        for offset in offsets:
            region = make_region(image, tensor, centre + np.asarray(offset))
            m, t = region.image_to_region(image)
            target = resample_affine(torch.from_numpy(mask.astype(np.float32)), m, t, (128,) * 3) > 0.5
            pairs.append((region.image, target.float()[None, None]))
    return pairs


@pytest.fixture(scope="module")
def tiny() -> Sam3D:
    return build_model("tiny", seed=0)


def random_module(embed_dim: int, seed: int) -> ConfidenceModule:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = ConfidenceModule(ConfidenceConfig(embed_dim=embed_dim, width=16, mask_width=8, hidden=32))
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return module.eval()


# --------------------------------------------------------------------------- the module


def test_module_output_shape_range_and_size() -> None:
    default = ConfidenceModule(ConfidenceConfig(embed_dim=384))
    assert sum(p.numel() for p in default.parameters()) <= 300_000

    module = random_module(96, seed=1)
    emb = torch.randn(3, 96, 8, 8, 8)
    logits = 6 * torch.randn(3, 1, 32, 32, 32)
    with torch.no_grad():
        out = module(emb, logits)
        shared = module(emb[:1], logits)  # one embedding for several masks, as the decoder allows
        single = module(emb[:1], logits[:1])
    assert out.shape == (3,) and shared.shape == (3,)
    assert torch.all((out >= 0) & (out <= 1))
    torch.testing.assert_close(shared[0], single[0])
    with pytest.raises(ValueError, match=r"embedding \(B, 96"):
        module(torch.randn(1, 48, 8, 8, 8), logits[:1])

    cfg = ConfidenceConfig(embed_dim=96, width=16)
    assert ConfidenceConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ConfidenceConfig fields"):
        ConfidenceConfig.from_dict({"embed_dim": 96, "depth": 3})
    with pytest.raises(ValueError, match="multiples of 4"):
        ConfidenceConfig(width=10)


# --------------------------------------------------------------------------- examples and learning


SMALL = ConfidenceConfig(embed_dim=96, width=16, mask_width=8, hidden=32)


@pytest.fixture(scope="module")
def organ_examples(tiny: Sam3D, ct_volume: Volume, ct_labels: Volume):
    """12 pairs (6 organs, 2 regions each) and their examples: 4 click sequences of 2 clicks (half of their
    masks also refined by the image), 8 degraded."""
    pairs = organ_pairs(ct_volume, ct_labels, list(ORGANS))
    calls = []
    examples = make_confidence_examples(
        tiny,
        pairs,
        np.random.default_rng(0),
        clicks_per_example=(1, 2),
        perturb=PerturbSettings(sequences=4, degraded_per_pair=8),
        progress=lambda done, total, msg: calls.append((done, total)),
    )
    assert calls == [(i, 12) for i in range(1, 13)]
    return pairs, examples


def test_examples_span_a_range_of_dice(organ_examples) -> None:
    pairs, examples = organ_examples
    refined = [i for i, k in enumerate(examples.kinds) if k.startswith("refined-")]
    assert 0 < len(refined) <= 12 * 4 * 2
    assert len(examples) == 12 * (4 * 2 + 8) + len(refined) and examples.n_pairs == 12
    assert examples.embeddings.shape == (12, 96, 8, 8, 8)
    assert examples.low_res.shape == (len(examples), 1, 32, 32, 32)
    d = examples.dice.numpy()
    assert np.all((d >= 0) & (d <= 1))
    assert d.std() > 0.2 and d.min() < 0.1 and d.max() > 0.9, np.round(d, 2)
    assert np.histogram(d, bins=5, range=(0, 1))[0].min() > 0, "every fifth of the Dice range is represented"
    assert {"clicks", "jitter"} <= set(examples.kinds) and any(
        k.startswith("degraded") for k in examples.kinds
    )

    # the recorded Dice is the Dice at region resolution of the upsampled mask, as the session pastes it
    # (for a refined mask: of the refined mask, which its logits only approximate, turned to +-2)
    assert not any(examples.kinds[r].startswith("refined-") for r in (0, len(examples) - 1))
    for row in (0, len(examples) - 1):
        up = F.interpolate(
            examples.low_res[row : row + 1], size=(128,) * 3, mode="trilinear", align_corners=False
        )
        target = pairs[int(examples.index[row])][1][0, 0].numpy() > 0.5
        assert float(examples.dice[row]) == pytest.approx(dice(target, up[0, 0].numpy() > 0), abs=1e-6)

    second = examples.select([1])
    in_second = int((examples.index == 1).sum())
    assert in_second >= 16
    assert (
        second.n_pairs == 1
        and len(second) == in_second
        and torch.equal(second.embeddings[0], examples.embeddings[1])
    )


def test_training_beats_untrained_module_on_held_out_pairs(organ_examples) -> None:
    _, examples = organ_examples
    held_out = [2, 9]  # spleen and stomach regions, as train_confidence_module(seed=0) would hold back
    train = examples.select([i for i in range(examples.n_pairs) if i not in held_out])
    val = examples.select(held_out)
    module, metrics = fit_confidence_module(train, val, config=SMALL, epochs=20, lr=2e-3, seed=0)
    assert not module.training
    assert metrics["val_loss"] < 0.5 * metrics["val_loss_untrained"], metrics
    assert metrics["val_mae"] < metrics["val_mae_constant"], metrics
    assert metrics["val_spearman"] is not None and metrics["val_spearman"] > 0.3, metrics
    assert sum(row["count"] for row in metrics["calibration"]) == metrics["n_val_examples"] == len(val)
    assert 0.0 <= metrics["threshold"] <= 1.0


def test_a_refined_example_carries_the_turned_logits_and_the_refined_dice() -> None:
    """A model mask of half a bright ball, unsure around it: refined by the image with its clicks (the second in
    the missed half), the example's logits are the model's set to +2 where the refinement turned voxels on, and
    its Dice is the refined mask's (higher than the model's)."""
    from pesf.train.confidence_examples import _refined_example

    size = 64
    grid = np.stack(np.indices((size,) * 3), axis=-1)
    ball = np.linalg.norm(grid - 32, axis=-1) <= 14
    image = np.where(ball, 3.0, -1.0).astype(np.float32) + np.random.default_rng(0).normal(
        0, 0.05, ball.shape
    )
    target = torch.from_numpy(ball.astype(np.float32))[None, None]
    half = torch.from_numpy((ball & (grid[..., 0] < 32)).astype(np.float32))[None, None]
    low = (F.adaptive_avg_pool3d(half, 16) > 0.5).float() * 4.0 - 1.0  # inside 3, unsure (-1) outside
    clicks = [(np.array([25.0, 32.0, 32.0]), True), (np.array([40.0, 32.0, 32.0]), True)]
    logits, refined_dice = _refined_example(image, low[0], target, clicks, PerturbSettings())
    up = F.interpolate(low, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0].numpy() > 0
    assert float(refined_dice) > dice(ball, up) + 0.2
    turned_on = (logits[0] == 2.0) & (low[0, 0] < 0)
    assert turned_on.any() and torch.equal(logits[0][~turned_on], low[0, 0][~turned_on])


def test_train_confidence_module_end_to_end(tiny: Sam3D, ct_volume: Volume, ct_labels: Volume) -> None:
    pairs = organ_pairs(ct_volume, ct_labels, ["liver", "spleen", "kidney_left"], offsets=OFFSETS_MM[:1])
    pairs.append((pairs[0][0], torch.zeros_like(pairs[0][1])))  # an empty target is skipped
    calls = []
    module, metrics = train_confidence_module(
        tiny,
        iter(pairs),
        epochs=3,
        lr=1e-3,
        seed=0,
        val_fraction=0.2,
        config=SMALL,
        clicks_per_example=(1,),
        perturb=PerturbSettings(sequences=2, degraded_per_pair=2, refine_prob=0.0),  # counts known
        progress=lambda done, total, msg: calls.append((done, total, msg.split(":")[0])),
    )
    assert isinstance(module, ConfidenceModule) and module.config == SMALL
    assert [c for c in calls if c[2] == "confidence module"] == [
        (e, 3, "confidence module") for e in (1, 2, 3)
    ]
    # three usable pairs: one for the network, one to validate, one to fit the Dice map
    assert metrics["n_train_pairs"] == 1 and metrics["n_val_pairs"] == 1 and metrics["n_map_pairs"] == 1
    assert metrics["n_train_examples"] == 4 and metrics["n_val_examples"] == 4
    assert metrics["n_calibration_examples"] == 4 and module.dice_map is not None
    for key in ("val_loss", "val_loss_untrained", "val_mae", "val_mae_unmapped", "val_spearman", "threshold"):
        assert key in metrics
    assert metrics["config"] == SMALL.to_dict()


# --------------------------------------------------------------------------- threshold and filtering


def test_calibrate_threshold_keeps_the_largest_set_reaching_the_target() -> None:
    pred = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    true = np.array([0.95, 0.9, 0.85, 0.5, 0.3])  # kept means: 0.95 0.925 0.9 0.8 0.7
    assert calibrate_threshold(pred, true, 0.8) == pytest.approx(0.55)
    assert calibrate_threshold(pred, true, 0.9) == pytest.approx(0.65)
    assert calibrate_threshold(pred, true, 0.5) == 0.0  # everything may be kept
    assert calibrate_threshold(pred, true, 0.99) == 1.0  # unreachable: nothing passes
    # ties are never split: equal predictions are kept or dropped together
    assert calibrate_threshold(np.array([0.8, 0.8, 0.2]), np.array([1.0, 0.9, 0.1]), 0.9) == pytest.approx(
        0.5
    )
    assert calibrate_threshold(np.array([0.8, 0.8, 0.2]), np.array([1.0, 0.5, 0.9]), 0.85) == 1.0

    rng = np.random.default_rng(3)
    true = rng.uniform(0, 1, 400)
    pred = np.clip(true + rng.normal(0, 0.15, 400), 0, 1)
    threshold = calibrate_threshold(pred, true, 0.8)
    assert true[pred >= threshold].mean() >= 0.8
    lower = pred[pred < threshold].max()  # keeping one more prediction level breaks the target
    assert true[pred >= lower].mean() < 0.8

    for bad in ((np.array([]), np.array([])), (np.ones(3), np.ones(2)), (np.array([np.nan]), np.ones(1))):
        with pytest.raises(ValueError):
            calibrate_threshold(*bad)


def test_filter_pseudo_labels_keeps_human_accepted_and_confident() -> None:
    records = [
        SimpleNamespace(name=n, confidence=c) for n, c in [("a", 0.9), ("b", None), ("c", 0.3), ("d", 0.5)]
    ]
    kept, dropped = filter_pseudo_labels(records, 0.5)
    assert [r.name for r in kept] == ["a", "b", "d"] and [r.name for r in dropped] == ["c"]
    kept, dropped = filter_pseudo_labels(iter(records), 1.0)
    assert [r.name for r in kept] == ["b"] and len(dropped) == 3
    assert filter_pseudo_labels([], 0.5) == ([], [])


# --------------------------------------------------------------------------- checkpoints and the session


def probe(model: Sam3D) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    emb = torch.randn(2, model.config.prompt_embed_dim, 8, 8, 8, generator=gen)
    logits = 5 * torch.randn(2, 1, 32, 32, 32, generator=gen)
    with torch.no_grad():
        return model.confidence_module(emb, logits)


def test_module_stays_out_of_the_official_state_dict(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = build_model("tiny", seed=0)
    official_keys = list(model.state_dict())
    attach_confidence_module(model, random_module(96, seed=2), {"threshold": 0.6})
    assert list(model.state_dict()) == official_keys
    assert len(list(model.parameters())) == len(list(build_model("tiny", seed=0).parameters()))
    model.double()
    assert model.confidence_module.head[0].weight.dtype == torch.float64
    model.float().train()
    assert model.confidence_module.training
    model.eval()

    # an official-style checkpoint (SAM-Med3D keys under model_state_dict) loads strictly, without a module
    monkeypatch.setattr(checkpoint, "get_config", lambda name: CONFIGS["tiny"])
    path = tmp_path / "sam_med3d.pth"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, path)
    loaded = load_model(path)
    assert loaded.confidence_module is None and loaded.confidence_state_dict is None
    assert not model_info(loaded)["has_confidence_module"]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_checkpoint_round_trip_with_module(tmp_path: Path, one_line_error) -> None:
    model = build_model("tiny", seed=0)
    attach_confidence_module(
        model, random_module(96, seed=3), {"threshold": 0.62, "metrics": {"val_mae": 0.1}}
    )
    path = save_checkpoint(model, tmp_path / "model.pt")
    raw = read_checkpoint(path)
    assert raw["confidence_config"] == {"embed_dim": 96, "width": 16, "mask_width": 8, "hidden": 32}
    assert raw["metadata"]["confidence"]["threshold"] == 0.62
    assert list(raw["state_dict"]) == list(build_model("tiny", seed=0).state_dict())

    loaded = load_model(path)
    assert isinstance(loaded.confidence_module, ConfidenceModule) and not loaded.confidence_module.training
    assert model_info(loaded)["has_confidence_module"]
    assert torch.equal(probe(loaded), probe(model))

    # saved again, the rebuilt module travels on
    again = load_model(save_checkpoint(loaded, tmp_path / "again.pt"))
    assert torch.equal(probe(again), probe(model))

    raw["confidence_config"] = {"embed_dim": 96, "width": 32, "mask_width": 8, "hidden": 32}
    torch.save(raw, tmp_path / "damaged.pt")
    with pytest.raises(PesfError) as excinfo:
        load_model(tmp_path / "damaged.pt")
    one_line_error(excinfo, "damaged confidence module")


def test_fit_dice_map_is_the_isotonic_fit() -> None:
    pred = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    true = np.array([0.3, 0.5, 0.4, 0.7, 0.9, 0.8])  # two violations: (0.5, 0.4) and (0.9, 0.8) pool
    knots, values = fit_dice_map(pred, true)
    # one knot per pooled block, anchored at (0, 0) and (1, 1)
    assert knots == pytest.approx([0.0, 0.1, 0.25, 0.4, 0.55, 1.0])
    assert values == pytest.approx([0.0, 0.3, 0.45, 0.7, 0.85, 1.0])
    # equal predictions share one knot
    knots, values = fit_dice_map(np.array([0.5, 0.5, 0.2]), np.array([0.9, 0.7, 0.1]))
    assert knots == pytest.approx([0.0, 0.2, 0.5, 1.0]) and values == pytest.approx([0.0, 0.1, 0.8, 1.0])
    # a score that falls as the Dice rises pools into one block: the map says "the mean" there
    knots, values = fit_dice_map(np.array([0.2, 0.4]), np.array([0.9, 0.1]))
    assert knots == pytest.approx([0.0, 0.3, 1.0]) and values == pytest.approx([0.0, 0.5, 1.0])
    # the map keeps every score's rank, so a threshold can still split any two masks
    module = random_module(96, seed=3)
    module.set_dice_map(*fit_dice_map(pred, true))
    mapped = module.map_dice(torch.tensor([0.0, 0.05, 0.6, 0.61, 0.99, 1.0]))
    assert bool((mapped.diff() > 0).all())
    with pytest.raises(ValueError):
        fit_dice_map(np.array([]), np.array([]))
    with pytest.raises(ValueError):
        fit_dice_map(np.array([0.2, np.nan]), np.array([0.1, 0.2]))


def test_dice_map_maps_scores_and_keeps_their_order() -> None:
    module = random_module(96, seed=3)
    raw = torch.tensor([0.0, 0.1, 0.25, 0.4, 0.7, 1.0])
    assert torch.equal(module.map_dice(raw), raw)  # no map: the network's own score
    module.set_dice_map([0.1, 0.4], [0.5, 0.8])
    mapped = module.map_dice(raw)
    assert mapped.tolist() == pytest.approx([0.5, 0.5, 0.65, 0.8, 0.8, 0.8])  # flat beyond the knots
    assert bool((mapped.diff() >= 0).all())
    module.set_dice_map([0.3], [0.6])
    assert module.map_dice(raw).tolist() == pytest.approx([0.6] * 6)
    for knots, values in (
        ([0.4, 0.1], [0.5, 0.8]),
        ([0.1, 0.4], [0.8, 0.5]),
        ([0.1], [1.2]),
        ([0.1, 0.2], [0.5]),
    ):
        with pytest.raises(ValueError):
            module.set_dice_map(knots, values)
    module.set_dice_map(None)
    assert module.dice_map is None


def test_the_dice_map_travels_in_the_checkpoint(tmp_path: Path, one_line_error) -> None:
    model = build_model("tiny", seed=0)
    module = random_module(96, seed=3)
    unmapped = probe_module(module)
    module.set_dice_map([0.0, 0.5, 1.0], [0.2, 0.6, 0.9])
    attach_confidence_module(model, module, {"threshold": 0.7})
    path = save_checkpoint(model, tmp_path / "model.pt")
    raw = read_checkpoint(path)
    assert raw["metadata"]["confidence"]["dice_map"] == {
        "knots": [0.0, 0.5, 1.0],
        "values": pytest.approx([0.2, 0.6, 0.9]),
    }
    loaded = load_model(path)
    scores = probe(loaded)
    assert torch.allclose(scores, loaded.confidence_module.map_dice(unmapped)) and not torch.allclose(
        scores, unmapped
    )
    again = load_model(save_checkpoint(loaded, tmp_path / "again.pt"))
    assert torch.equal(probe(again), scores)

    raw["metadata"]["confidence"]["dice_map"] = {"knots": [0.5, 0.1], "values": [0.2, 0.3]}
    torch.save(raw, tmp_path / "damaged.pt")
    with pytest.raises(PesfError) as excinfo:
        load_model(tmp_path / "damaged.pt")
    one_line_error(excinfo, "damaged confidence module")


def probe_module(module: ConfidenceModule) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    emb = torch.randn(2, 96, 8, 8, 8, generator=gen)
    logits = 5 * torch.randn(2, 1, 32, 32, 32, generator=gen)
    with torch.no_grad():
        return module(emb, logits)


def test_session_reports_the_module_score(ct_volume: Volume, ct_labels: Volume, tmp_path: Path) -> None:
    model = build_model("tiny", seed=0)
    attach_confidence_module(model, random_module(96, seed=4), {"threshold": 0.5})
    loaded = load_model(save_checkpoint(model, tmp_path / "model.pt"))
    outputs = []
    loaded.confidence_module.register_forward_hook(lambda mod, args, out: outputs.append(float(out[0])))
    session = InteractiveSession(loaded, ct_volume, SessionConfig(confidence_runs=0, grow=False))
    liver = np.argwhere(ct_labels.array == ORGANS["liver"]).mean(axis=0)
    result = session.add_click("liver", liver)
    assert result.confidence_source == "confidence-module"
    assert result.confidence == pytest.approx(outputs[-1]) and 0.0 <= result.confidence <= 1.0


def test_the_score_of_a_refined_mask_scores_the_turned_voxels(
    ct_volume: Volume, ct_labels: Volume, tmp_path: Path
) -> None:
    """After a corrective click the module scores the refined mask: the model's low-resolution logits with the
    voxels the refinement turned set to +-2 (a different input, a different score); without refinement, the
    model's own logits as before."""
    model = build_model("tiny", seed=0)
    attach_confidence_module(model, random_module(96, seed=4), {"threshold": 0.5})
    loaded = load_model(save_checkpoint(model, tmp_path / "model.pt"))
    inputs = []
    loaded.confidence_module.register_forward_hook(lambda mod, args, out: inputs.append(args[1].clone()))
    liver = ct_labels.array == ORGANS["liver"]
    first = np.argwhere(liver).mean(axis=0)
    second = np.argwhere(liver)[0].astype(np.float64)  # a voxel at the liver's edge
    scores = {}
    for refine in (None, RefineConfig()):
        session = InteractiveSession(
            loaded, ct_volume, SessionConfig(confidence_runs=0, grow=False, refine=refine)
        )
        session.add_click("liver", first)
        result = session.add_click("liver", second)
        inputs.clear()
        scores[refine is None] = result.confidence
        assert 0.0 <= result.confidence <= 1.0 and len(inputs) == result.n_regions  # one score per region
        values = torch.cat([x.flatten() for x in inputs]).unique()
        if refine is None:
            assert not torch.isin(values, torch.tensor([2.0, -2.0])).any()
        else:
            assert torch.isin(torch.tensor([2.0, -2.0]), values).any()  # turned voxels reach the module
    assert scores[True] != scores[False]
