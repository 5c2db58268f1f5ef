"""The PESF trainer in this process: settings, sample plan, training step, resumable state, checkpoints.

The background process (status, stop, resume, lock, torchrun) is tested in ``test_worker.py``, which reuses
the workspace helpers defined here. Runs use the ``tiny`` configuration with 2 click iterations and a few steps.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import pesf
from pesf.cli import main
from pesf.errors import PesfError
from pesf.models import build_model, save_checkpoint
from pesf.train.config import TrainConfig, build_plan, load_config, model_confidence_threshold
from pesf.train.distributed import DistContext
from pesf.train.status import Curves, StatusFile, read_status
from pesf.train.store import CaseStore, OrganRecord
from pesf.train.trainer import Trainer
from pesf.train.worker import list_versions, run_training

ORGANS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "stomach": 6}
PSEUDO = {"spleen": 0.9, "kidney_left": 0.2}  # confidence of the pseudo-labelled organs of case "p"
STATUS_KEYS = {
    "state", "pid", "epoch", "step", "total_steps", "loss", "val_dice", "eta_s", "model_version", "message",
    "started", "updated", "device",
}  # fmt: skip


# --------------------------------------------------------------------------------------------- helpers
def make_workspace(root: Path, samples) -> Path:
    """A case store from the sample CT: ``a`` (5 accepted organs), ``p`` (2 pseudo-labels: spleen 0.9,
    kidney_left 0.2) and ``v`` (accepted spleen, the validation case)."""
    from pesf.io import read_labelmap, read_volume

    image = read_volume(samples.ct_image)
    label = read_labelmap(samples.ct_label, like=image)[0]

    def only(values: dict[str, int]):
        return label.with_array(np.where(np.isin(label.array, list(values.values())), label.array, 0))

    store = CaseStore(root, create=True)
    store.add_case(image, only(ORGANS), [OrganRecord(n, v, "accepted") for n, v in ORGANS.items()], "a")
    pseudo = {n: ORGANS[n] for n in PSEUDO}
    records = [
        OrganRecord(n, v, "pseudo", confidence=PSEUDO[n], source="automatic") for n, v in pseudo.items()
    ]
    store.add_case(image, only(pseudo), records, "p")
    store.add_case(image, only({"spleen": 1}), [OrganRecord("spleen", 1, "accepted")], "v")
    return root


def tiny_checkpoint(path: Path, metadata: dict | None = None) -> Path:
    """A tiny SAM-Med3D-architecture model with seeded random weights, in PESF's format."""
    save_checkpoint(build_model("tiny", seed=0), path, metadata=metadata)
    return path


def test_settings(model: Path | str, **changes) -> dict:
    """Fast settings for tests: tiny model, 2 clicks, validation only at the end on case ``v``."""
    settings = {
        "base_model": str(model),
        "steps": 2,
        "click_iterations": 2,
        "warmup_steps": 1,
        "val_every": 0,
        "save_every": 1,
        "val_cases": ["v"],
        "seed": 0,
    }
    settings.update(changes)
    return settings


test_settings.__test__ = False  # a helper, not a test


def write_config(path: Path, model: Path | str, **changes) -> Path:
    """A JSON config file of :func:`test_settings`."""
    path.write_text(json.dumps(test_settings(model, **changes)))
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared, loaded CI machine more threads only oversubscribe the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def template(samples, tmp_path_factory) -> tuple[Path, Path]:
    """``(workspace, tiny checkpoint)`` built once per module; tests copy the workspace."""
    root = tmp_path_factory.mktemp("template")
    return make_workspace(root / "ws", samples), tiny_checkpoint(root / "tiny.pt")


@pytest.fixture
def ws(template, tmp_path) -> Path:
    return Path(shutil.copytree(template[0], tmp_path / "ws"))


@pytest.fixture
def tiny(template) -> Path:
    return template[1]


def _trainer(ws: Path, tiny: Path, **changes) -> Trainer:
    cfg = TrainConfig.from_dict(test_settings(tiny, **changes))
    return Trainer(CaseStore(ws), cfg, pesf.load_model(tiny))


# --------------------------------------------------------------------------------------------- settings
def test_unknown_config_keys_are_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"steps": 3, "stepz": 4, "learning_rate": 0.1}))
    with pytest.raises(PesfError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert "stepz" in message and "learning_rate" in message and "\n" not in message


@pytest.mark.parametrize(
    "bad",
    [
        {"steps": 0},
        {"trainable": "encoder"},
        {"lr": -1.0},
        {"val_fraction": 1.5},
        {"amp": "maybe"},
        {"steps": "10"},
        {"training_clicks": "random"},
        {"loss_size": -64},
        {"augmentation": {"flip": 0.1}},
        {"augmentation": {"elastic_prob": 1.5}},
        {"augmentation": {"spacing_range": [2.0, 1.0]}},
    ],
)
def test_invalid_settings_are_refused(bad):
    with pytest.raises(PesfError, match=next(iter(bad))):
        TrainConfig.from_dict(bad)


def test_settings_round_trip_and_overrides(tmp_path):
    cfg = TrainConfig(steps=7, trainable="decoder", val_cases=["x"])
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"steps": 7}))
    assert load_config(path, steps=3, device=None).steps == 3
    path.write_text("{not json")
    with pytest.raises(PesfError, match="not valid JSON"):
        load_config(path)


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.0)
    factors = [cfg.learning_rate_factor(s) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert factors[-1] < 0.01
    assert TrainConfig(schedule="constant", warmup_steps=0).learning_rate_factor(50) == 1.0


# --------------------------------------------------------------------------------------------- the plan
def test_plan_filters_pseudo_labels_and_holds_back_validation(ws, tiny):
    cfg = TrainConfig.from_dict(test_settings(tiny))
    plan = build_plan(CaseStore(ws), cfg, {})
    train = {i.key for i in plan.train}
    assert train == {f"a/{o}" for o in ORGANS} | {"p/spleen"}
    assert [i.key for i in plan.val] == ["v/spleen"] and plan.val_cases == ["v"]
    assert [i.key for i in plan.dropped] == ["p/kidney_left"]
    assert "below threshold" in plan.dropped[0].reason
    assert all(0.0 <= i.difficulty <= 1.0 and i.voxels > 0 for i in plan.train)
    summary = json.loads(json.dumps(plan.summary()))
    assert summary["counts"] == {"train": 6, "val": 1, "dropped": 1}

    unfiltered = build_plan(CaseStore(ws), cfg.updated(use_filtering=False), {})
    assert "p/kidney_left" in {i.key for i in unfiltered.train} and not unfiltered.dropped
    accepted_only = build_plan(CaseStore(ws), cfg.updated(use_pseudo=False), {})
    assert not any(i.case_id == "p" for i in accepted_only.train + accepted_only.dropped)


def test_threshold_comes_from_the_model_when_not_set(ws, tiny):
    metadata = {"confidence": {"threshold": 0.95, "config": {}}}
    assert model_confidence_threshold(metadata) == 0.95
    plan = build_plan(CaseStore(ws), TrainConfig.from_dict(test_settings(tiny)), metadata)
    assert plan.confidence_threshold == 0.95
    assert {i.key for i in plan.dropped} == {"p/spleen", "p/kidney_left"}
    explicit = build_plan(
        CaseStore(ws), TrainConfig.from_dict(test_settings(tiny, confidence_threshold=0.1)), metadata
    )
    assert explicit.confidence_threshold == 0.1 and not explicit.dropped


def test_plan_errors(ws, tiny, tmp_path, one_line_error):
    with pytest.raises(PesfError) as excinfo:
        build_plan(CaseStore(tmp_path / "empty", create=True), TrainConfig(), {})
    one_line_error(excinfo, "no")
    with pytest.raises(PesfError) as excinfo:
        build_plan(CaseStore(ws), TrainConfig(val_cases=["nope"]), {})
    one_line_error(excinfo, "nope")
    with pytest.raises(PesfError) as excinfo:
        build_plan(CaseStore(ws), TrainConfig(val_cases=["a", "p", "v"]), {})
    one_line_error(excinfo, "no training sample left")


# --------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("trainable", ["decoder", "all"])
def test_steps_have_finite_loss_and_train_the_right_weights(ws, tiny, trainable):
    trainer = _trainer(ws, tiny, trainable=trainable)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    results = [trainer.train_step() for _ in range(2)]
    assert trainer.step == 2
    for r in results:
        assert np.isfinite(r.loss) and len(r.click_losses) == 2 and all(np.isfinite(r.click_losses))
    after = trainer.model.state_dict()
    encoder_same = all(torch.equal(before[k], after[k]) for k in before if k.startswith("image_encoder."))
    decoder_same = all(
        torch.equal(before[k], after[k]) for k in before if k.startswith("mask_decoder.transformer")
    )
    assert encoder_same == (trainable == "decoder")
    assert not decoder_same


def test_synthetic_targets_replace_a_share_of_the_training_regions(ws, tiny):
    """With ``synthetic_prob`` 1 every training region is a synthetic target (named so in the step's record);
    with 0 none is, and validation never is."""
    trainer = _trainer(ws, tiny, augmentation={"synthetic_prob": 1.0})
    result = trainer.train_step()
    assert result.samples == ["synthetic"] and np.isfinite(result.loss)
    item = trainer.plan.train[0]
    sample = trainer._prepare(item, np.random.default_rng(0), train=False)
    assert sample.organ == item.organ and sample.organ != "synthetic"
    trainer = _trainer(ws, tiny, augmentation={"synthetic_prob": 0.0})
    assert "synthetic" not in trainer.train_step().samples


def test_coarse_loss_grid_matches_the_full_grid_loss(ws, tiny):
    """The loss on a half-resolution grid (``loss_size``) stays close to the loss on the region's grid and
    trains the same weights; clicks land on the organ, in region coordinates."""
    from pesf.models import load_model
    from pesf.train.clicks import TrainingClicker
    from pesf.train.trainer import InteractiveStep

    model = load_model(tiny)
    size = model.config.image_size
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    target = (((grid - 60.0) ** 2).sum(0) < 20.0**2).float()[None, None]
    image = (target * 2.0 - 1.0) + 0.1 * torch.randn_like(target)
    known = torch.ones_like(target, dtype=torch.bool)
    losses = {}
    for loss_size in (0, size // 2):
        torch.manual_seed(0)
        step = InteractiveStep(model, 1, True, loss_size=loss_size)
        loss, _, preds = step(image, target, known, [TrainingClicker(3)], [1.5])
        losses[loss_size] = float(loss.detach())
        assert preds[0].shape[-1] == (loss_size or size)
        model.zero_grad()
        loss.backward()
        assert model.image_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert abs(losses[0] - losses[size // 2]) < 0.05 * losses[0]
    with pytest.raises(PesfError, match="loss_size 48 must divide"):
        _trainer(ws, tiny, loss_size=48)
    trainer = _trainer(ws, tiny, loss_size=size // 2, training_clicks="fast")
    assert np.isfinite(trainer.train_step().loss)


def test_a_sample_s_first_click_is_given_to_the_model(tiny):
    """A sample centred on its first click gets that click first (in region indices, positive), on the loss
    grid too; samples without one get the simulated user's."""
    from pesf.models import load_model
    from pesf.train.clicks import TrainingClicker
    from pesf.train.trainer import InteractiveStep

    model = load_model(tiny).eval()
    size = model.config.image_size
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    target = (((grid - 40.0) ** 2).sum(0) < 15.0**2).float()[None, None].repeat(2, 1, 1, 1, 1)
    image = target * 2.0 - 1.0
    known = torch.ones_like(target, dtype=torch.bool)
    seen = []
    decode = model.decode

    def spy(embedding, points, prev):
        seen.append((points[0].clone(), points[1].clone()))
        return decode(embedding, points, prev)

    model.decode = spy
    given = np.array([45.0, 38.0, 41.0])
    for loss_size in (0, size // 2):
        seen.clear()
        step = InteractiveStep(model, 2, False, loss_size=loss_size)
        with torch.no_grad():
            step(image, target, known, [TrainingClicker(1), TrainingClicker(1)], [1.5, 1.5], [given, None])
        coords, labels = seen[0]
        np.testing.assert_allclose(coords[0, 0].numpy(), given)
        assert labels[0, 0] == 1 and labels[1, 0] == 1
        assert not np.allclose(coords[1, 0].numpy(), given)  # the other sample's user chose its own
        assert seen[1][0].shape[1] == 2  # the corrective click follows


def test_resumed_state_continues_exactly(ws, tiny, tmp_path):
    straight = _trainer(ws, tiny, steps=3)
    for _ in range(3):
        straight.train_step()

    first = _trainer(ws, tiny, steps=3)
    for _ in range(2):
        first.train_step()
    torch.save(first.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # plain tensors and containers only
    resumed = _trainer(ws, tiny, steps=3)
    resumed.load_state_dict(state)
    assert resumed.step == 2 and resumed.resumed_from == 2
    resumed.train_step()
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-4, atol=1e-6)


class _Recorder:
    def __init__(self):
        self.events = []

    def on_start(self, trainer):
        self.events.append(("start", trainer.step))

    def on_step_end(self, trainer, result):
        self.events.append(("step", result.step))

    def on_validation_end(self, trainer, result):
        self.events.append(("validation", result.step, tuple(sorted(result.dice))))

    def on_checkpoint(self, trainer, request):
        self.events.append(("checkpoint", request.step, request.state, request.version, request.reason))

    def on_end(self, trainer, outcome):
        self.events.append(("end", outcome.state, outcome.step))


def test_events_and_stop_request(ws, tiny):
    trainer = _trainer(ws, tiny, steps=50, save_every=0)
    recorder = _Recorder()
    trainer.add_handler(recorder)
    outcome = trainer.run(should_stop=lambda: trainer.step >= 1)
    assert outcome.state == "stopped" and outcome.step == 1
    assert recorder.events == [
        ("start", 0),
        ("step", 1),
        ("validation", 1, ("click_1", "click_3")),
        ("checkpoint", 1, True, True, "stopped"),
        ("end", "stopped", 1),
    ]
    assert 0.0 <= trainer.last_validation.dice["click_3"] <= 1.0


# --------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("failing", ["version", "state"])
def test_full_disk_keeps_the_previous_version_and_state(ws, tiny, tmp_path, monkeypatch, failing):
    config = write_config(tmp_path / "c.json", tiny, save_every=0)
    first = run_training(ws, config, progress=False)
    assert first.state == "finished" and [n for n, _ in list_versions(ws)] == [1]
    state_before = (ws / "state" / "last.pt").read_bytes()

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        is_state = "state" in Path(f).parent.name
        if is_state == (failing == "state"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(PesfError) as excinfo:
        run_training(ws, config, progress=False, fresh=True)
    assert "no space left" in str(excinfo.value) and "\n" not in str(excinfo.value)
    status = read_status(ws)
    assert status["state"] == "failed" and "no space left" in status["message"]
    assert not list((ws / "models").glob(".tmp*")) and not list((ws / "state").glob(".*tmp*"))
    assert (ws / "state" / "last.pt").read_bytes() == state_before
    expected = [1] if failing == "version" else [1, 2]
    assert [n for n, _ in list_versions(ws)] == expected
    for _, folder in list_versions(ws):
        assert pesf.load_model(folder / "model.pt").trained
    assert torch.load(ws / "state" / "last.pt", weights_only=True)["trainer"]["step"] == 2


def test_a_new_run_after_a_finished_one_starts_from_latest(ws, tiny, tmp_path):
    run_training(ws, write_config(tmp_path / "c1.json", tiny, steps=1, save_every=0), progress=False)
    second = run_training(
        ws, write_config(tmp_path / "c2.json", tiny, steps=1, base_model="latest"), progress=False
    )
    assert second.state == "finished" and second.extra["versions"] == ["v2"]
    card = json.loads((ws / "models" / "v2" / "card.json").read_text())
    assert (
        Path(card["base_model"]) == ws / "models" / "v1" / "model.pt" and card["time"]["resumed_from"] == []
    )
    assert pesf.load_model(ws / "models" / "v2" / "model.pt").metadata["training"]["version"] == "v2"


def test_a_version_trained_on_extruded_slabs_says_so(ws, tiny, tmp_path):
    """A run whose augmentation extrudes thin slabs (``extrude_mm``) writes ``"thin_scans": "extrude"`` into
    its versions' metadata, so sessions read few-slice scans as it was trained to; a run without does not."""
    augmentation = {"coverage_prob": 1.0, "coverage_range": [3.0, 3.0], "extrude_mm": 30.0}
    config = write_config(tmp_path / "c1.json", tiny, steps=1, save_every=0, augmentation=augmentation)
    run_training(ws, config, progress=False)
    assert pesf.load_model(ws / "models" / "v1" / "model.pt").metadata["thin_scans"] == "extrude"
    run_training(ws, write_config(tmp_path / "c2.json", tiny, steps=1, save_every=0), progress=False)
    assert "thin_scans" not in pesf.load_model(ws / "models" / "v2" / "model.pt").metadata


def test_version_carries_the_confidence_module_and_its_threshold(ws, tmp_path):
    from pesf.models import model_info
    from pesf.train.confidence import ConfidenceConfig, ConfidenceModule, attach_confidence_module

    model = build_model("tiny", seed=0)
    attach_confidence_module(model, ConfidenceModule(ConfidenceConfig(embed_dim=96)), {"threshold": 0.95})
    base = tmp_path / "with_confidence.pt"
    save_checkpoint(model, base)
    run_training(ws, write_config(tmp_path / "c.json", base, steps=1), progress=False)
    card = json.loads((ws / "models" / "v1" / "card.json").read_text())
    assert card["data"]["confidence_threshold"] == 0.95  # the model's calibrated threshold
    assert {d["organ"] for d in card["data"]["dropped"]} == {"spleen", "kidney_left"}
    trained = pesf.load_model(ws / "models" / "v1" / "model.pt")
    assert model_info(trained)["has_confidence_module"]
    assert trained.metadata["confidence"]["threshold"] == 0.95


# --------------------------------------------------------------------------------------------- reporting
def test_status_file_is_throttled_and_complete(tmp_path):
    status = StatusFile(tmp_path / "status.json", "cpu", 10, min_interval_s=3600)
    assert status.update(force=True, state="running")
    assert not status.update(step=1)  # throttled
    assert read_status(tmp_path)["step"] == 0
    assert status.update(force=True, step=2)
    data = read_status(tmp_path)
    assert STATUS_KEYS <= set(data) and data["step"] == 2 and data["state"] == "running"
    with pytest.raises(KeyError):
        status.update(sttae="running")


def test_curves_are_written(tmp_path):
    curves = Curves(step=[1, 2, 3], loss=[1.0, 0.8, float("nan")], lr=[1e-4] * 3)
    curves.val_step, curves.val_dice = [3], {"click_1": [0.5], "click_3": [0.7]}
    curves.save(tmp_path)
    assert (tmp_path / "curves.png").stat().st_size > 1000
    data = json.loads((tmp_path / "curves.json").read_text())
    assert data["loss"] == [1.0, 0.8, None] and data["val_dice"]["click_3"] == [0.7]
    assert Curves.from_dict(curves.to_dict(), up_to_step=2).step == [1, 2]


def test_single_process_context_and_shards():
    ctx = DistContext()
    assert ctx.is_main and not ctx.distributed
    ctx.barrier()
    assert ctx.all_reduce_mean(torch.tensor(2.5)) == 2.5 and ctx.any(True) and not ctx.any(False)
    items = list(range(10))
    shards = [DistContext(rank=r, world_size=3).shard(items) for r in range(3)]
    assert sorted(sum(shards, [])) == items and {len(s) for s in shards} <= {3, 4}


# --------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_one_line_exit_2(ws, tiny, tmp_path, capsys):
    def run(*args) -> str:
        assert main(["train", *map(str, args)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pesf: error:") and "\n" not in err, err
        return err

    assert "does not exist" in run(tmp_path / "missing")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steps": 2, "warmup": 3}))
    assert "warmup" in run(ws, "--config", bad)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny.read_bytes()[:5000])
    assert "corrupt" in run(ws, "--config", write_config(tmp_path / "c.json", corrupt))
    assert read_status(ws)["state"] == "failed"
    empty = CaseStore(tmp_path / "empty", create=True).root
    assert "no" in run(empty, "--config", write_config(tmp_path / "c2.json", tiny))
    assert "--wait" in run(ws, "--wait")
    assert "no trainer is running" in run(ws, "--stop")
