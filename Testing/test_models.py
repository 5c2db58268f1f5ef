"""Tests of pesf.models: SAM-Med3D architecture, the fast exact encoder attention, and checkpoints.

Everything runs on the CPU with random weights. The fast attention is compared with the padded-window
computation of SAM-Med3D (``reference_padded_attention.py``) on the whole encoder embedding.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_padded_attention import padded_reference_attention

import pesf
from pesf.errors import PesfError
from pesf.models import (
    CONFIGS,
    DEFAULT_CONFIG,
    Sam3D,
    SamConfig,
    build_model,
    load_model,
    model_info,
    save_checkpoint,
)
from pesf.models.image_encoder import EncoderAttention

# vit_b_ori sizes with 3 blocks (2 windowed, 1 global): every kind of block at full width, a quarter the time.
VIT_B_3 = dataclasses.replace(
    CONFIGS["vit_b_ori"], name="vit_b_ori_3", encoder_depth=3, encoder_global_attn_indexes=(2,)
)


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def vit_b() -> Sam3D:
    """One randomly initialised vit_b_ori for the whole module (building it takes a second)."""
    return build_model("vit_b_ori", seed=3)


@pytest.fixture
def resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``Resources`` folder (no bundled models) for the duration of a test."""
    (tmp_path / "Resources" / "Models").mkdir(parents=True)
    monkeypatch.setenv("PESF_RESOURCES", str(tmp_path / "Resources"))
    return tmp_path / "Resources"


def randomise(model: Sam3D, seed: int, std: float = 0.5) -> Sam3D:
    """Give the zero-initialised relative/absolute position tables and the qkv biases random values, so that
    the relative bias and the padded keys (whose key and value are the qkv biases) matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.image_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name or "qkv.bias" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def image(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, 128, 128, 128, generator=torch.Generator().manual_seed(seed))


def prompts(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.tensor([[[64.0, 60.0, 70.0], [10.0, 100.0, 30.0]]]).repeat(batch, 1, 1)
    labels = torch.tensor([[1, 0]]).repeat(batch, 1)
    return coords, labels


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def no_padding_kernel(attn: EncoderAttention, x: torch.Tensor) -> torch.Tensor:
    """The reference with the window shrunk to the grid: what one gets by ignoring the padded keys."""
    saved = attn.window_size
    attn.window_size = 0
    try:
        return padded_reference_attention(attn, x)
    finally:
        attn.window_size = saved


# --------------------------------------------------------------------------- architecture


def test_vit_b_ori_state_dict_matches_sam_med3d_names_and_shapes(vit_b: Sam3D) -> None:
    sd = vit_b.state_dict()
    expected = {
        "image_encoder.patch_embed.proj.weight": (768, 1, 16, 16, 16),
        "image_encoder.pos_embed": (1, 8, 8, 8, 768),
        "image_encoder.blocks.0.attn.qkv.weight": (2304, 768),
        "image_encoder.blocks.0.attn.rel_pos_d": (27, 64),
        "image_encoder.blocks.2.attn.rel_pos_w": (15, 64),
        "image_encoder.blocks.11.mlp.lin2.weight": (768, 3072),
        "image_encoder.neck.0.weight": (384, 768, 1, 1, 1),
        "image_encoder.neck.3.bias": (384,),
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (3, 128),
        "prompt_encoder.point_embeddings.1.weight": (1, 384),
        "prompt_encoder.not_a_point_embed.weight": (1, 384),
        "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2, 2),
        "prompt_encoder.mask_downscaling.6.weight": (384, 16, 1, 1, 1),
        "prompt_encoder.no_mask_embed.weight": (1, 384),
        "mask_decoder.transformer.layers.1.cross_attn_token_to_image.q_proj.weight": (192, 384),
        "mask_decoder.transformer.layers.0.mlp.lin1.weight": (2048, 384),
        "mask_decoder.transformer.final_attn_token_to_image.out_proj.weight": (384, 192),
        "mask_decoder.transformer.norm_final_attn.weight": (384,),
        "mask_decoder.iou_token.weight": (1, 384),
        "mask_decoder.mask_tokens.weight": (4, 384),
        "mask_decoder.output_upscaling.0.weight": (384, 96, 2, 2, 2),
        "mask_decoder.output_upscaling.1.weight": (96,),
        "mask_decoder.output_upscaling.3.weight": (96, 48, 2, 2, 2),
        "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight": (48, 384),
        "mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert len(sd) == 189 + 15 + 120  # encoder, prompt encoder, decoder tensors in SAM-Med3D vit_b_ori
    assert {k.split(".")[0] for k in sd} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert not any(k.startswith("pixel_") for k in sd)


@pytest.mark.parametrize("name", ["tiny", "vit_b_ori"])
def test_submodule_output_shapes(name: str, vit_b: Sam3D) -> None:
    model = vit_b if name == "vit_b_ori" else build_model(name, seed=0)
    cfg = model.config
    e = cfg.prompt_embed_dim
    with torch.inference_mode():
        emb = model.image_encoder(image(2))
        assert emb.shape == (2, e, 8, 8, 8)
        assert model.prompt_encoder.get_dense_pe().shape == (1, e, 8, 8, 8)
        sparse, dense = model.prompt_encoder(
            points=prompts(2), boxes=None, masks=torch.zeros(2, 1, 32, 32, 32)
        )
        assert sparse.shape == (2, 3, e) and dense.shape == (2, e, 8, 8, 8)
        sparse0, dense0 = model.prompt_encoder(points=None, boxes=None, masks=None)
        assert sparse0.shape == (1, 0, e) and dense0.shape == (1, e, 8, 8, 8)
        pe = model.prompt_encoder.get_dense_pe()
        masks, iou = model.mask_decoder(emb, pe, sparse, dense, multimask_output=False)
        assert masks.shape == (2, 1, 32, 32, 32) and iou.shape == (2, 1)
        masks, iou = model.mask_decoder(emb, pe, sparse, dense, multimask_output=True)
        assert masks.shape == (2, 3, 32, 32, 32) and iou.shape == (2, 3)
        # One cached embedding shared by a batch of prompts, as SAM-Med3D allows.
        masks, _ = model.decode(emb[:1], prompts(2), torch.zeros(2, 1, 32, 32, 32))
        assert masks.shape == (2, 1, 32, 32, 32)
        assert torch.isfinite(masks).all()


def test_bad_shapes_raise_clear_errors() -> None:
    model = build_model("tiny", seed=0)
    with pytest.raises(ValueError, match=r"expects \(B, 1, 128, 128, 128\)"):
        model.image_encoder(torch.zeros(1, 1, 64, 64, 64))
    with pytest.raises(ValueError, match="mask prompt must be"):
        model.prompt_encoder(points=None, boxes=None, masks=torch.zeros(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="box prompts are not supported"):
        model.prompt_encoder(points=None, boxes=torch.zeros(1, 6), masks=None)


def test_point_labels_and_padding_follow_sam_med3d() -> None:
    pe = build_model("tiny", seed=0).prompt_encoder
    coords = torch.tensor([[[5.0, 6.0, 7.0], [50.0, 60.0, 70.0], [1.0, 2.0, 3.0]]])
    with torch.no_grad():
        sparse, _ = pe(points=(coords, torch.tensor([[1, 0, -1]])), boxes=None, masks=None)
        code = pe.pe_layer.encode((coords + 0.5) / 128.0)
    assert sparse.shape[1] == 4  # one "not a point" token appended
    torch.testing.assert_close(sparse[0, 0], code[0, 0] + pe.point_embeddings[1].weight[0])
    torch.testing.assert_close(sparse[0, 1], code[0, 1] + pe.point_embeddings[0].weight[0])
    torch.testing.assert_close(sparse[0, 2], pe.not_a_point_embed.weight[0])  # -1: position dropped
    torch.testing.assert_close(sparse[0, 3], pe.not_a_point_embed.weight[0])


def test_dense_positional_code_swaps_the_first_two_axes_like_sam_med3d() -> None:
    """Cell (u, v, w) of the dense code is the point code of ((v+.5)/8, (u+.5)/8, (w+.5)/8)."""
    layer = build_model("tiny", seed=0).prompt_encoder.pe_layer
    dense = layer.grid((8, 8, 8))
    for u, v, w in [(0, 5, 2), (7, 1, 4), (3, 3, 6)]:
        point = torch.tensor([(v + 0.5) / 8, (u + 0.5) / 8, (w + 0.5) / 8])
        torch.testing.assert_close(dense[:, u, v, w], layer.encode(point))


# --------------------------------------------------------------------------- fast exact attention


@pytest.mark.parametrize("config", [CONFIGS["tiny"], CONFIGS["small"], VIT_B_3], ids=lambda c: c.name)
def test_fast_attention_matches_padded_reference(config: SamConfig) -> None:
    model = randomise(build_model(config, seed=1), seed=2)
    encoder = model.image_encoder
    x = image(1, seed=4)
    with torch.inference_mode():
        fast = encoder(x)
        encoder.set_attention_kernel(padded_reference_attention)
        reference = encoder(x)
        encoder.set_attention_kernel(no_padding_kernel)
        unpadded = encoder(x)
        encoder.set_attention_kernel(None)
    assert torch.isfinite(fast).all()
    assert rel_diff(fast, reference) < 1e-4
    # The padded keys matter: leaving them out is far from the reference, so the test above is sensitive.
    assert rel_diff(unpadded, reference) > 1e-2


@pytest.mark.slow
def test_fast_attention_matches_padded_reference_full_vit_b_ori(vit_b: Sam3D) -> None:
    model = randomise(build_model("vit_b_ori", seed=5), seed=6)
    encoder = model.image_encoder
    x = image(1, seed=7)
    with torch.inference_mode():
        fast = encoder(x)
        encoder.set_attention_kernel(padded_reference_attention)
        reference = encoder(x)
    assert rel_diff(fast, reference) < 1e-4


def test_fast_attention_gradients_match_padded_reference() -> None:
    # float64: deep float32 backward passes differ from the exact gradient by ~1% for both computations.
    model = randomise(build_model("tiny", seed=8), seed=9)
    x = image(1, seed=10)

    def block0_grads(kernel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        encoder = model.image_encoder.to(dtype)
        encoder.set_attention_kernel(kernel)
        encoder.zero_grad()
        encoder(x.to(dtype)).square().mean().backward()
        encoder.set_attention_kernel(None)
        return {n: p.grad.double() for n, p in encoder.named_parameters() if "blocks.0" in n}

    fast, reference = (
        block0_grads(None, torch.float64),
        block0_grads(padded_reference_attention, torch.float64),
    )
    for name in fast:
        assert rel_diff(fast[name], reference[name]) < 1e-8, name
    # The float32 kernel (fused attention) passes gradients to the relative bias too.
    fast32 = block0_grads(None, torch.float32)
    for name in ("blocks.0.attn.rel_pos_d", "blocks.0.attn.rel_pos_h", "blocks.0.attn.rel_pos_w"):
        assert rel_diff(fast32[name], reference[name]) < 0.1, name


def test_fast_attention_is_exact_for_extreme_position_tables() -> None:
    model = randomise(build_model("tiny", seed=11), seed=12, std=4.0)
    encoder = model.image_encoder
    x = image(1, seed=13)
    with torch.inference_mode():
        fast = encoder(x)
        encoder.set_attention_kernel(padded_reference_attention)
        reference = encoder(x)
    assert torch.isfinite(fast).all()
    assert rel_diff(fast, reference) < 1e-4


# --------------------------------------------------------------------------- checkpoints


class _Evil:
    """Unpickling this runs ``_pwn``: a stand-in for a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_pwn, (str(self.marker),))


def _pwn(marker: str) -> None:
    Path(marker).write_text("pwned")


def official_checkpoint(model: Sam3D) -> dict:
    """A dict shaped like SAM-Med3D's ``train.py`` checkpoints (training state next to the weights)."""
    param = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.AdamW([param], lr=8e-4)
    param.grad = torch.ones(4)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [120, 180], 0.1)
    return {
        "epoch": 200,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "lr_scheduler_state_dict": scheduler.state_dict(),
        "losses": [0.9, 0.5],
        "dices": [0, 0.0],
        "best_loss": np.float64(0.5),
        "best_dice": 0.81,
        "args": argparse.Namespace(
            task_name="union_train", model_type="vit_b_ori", step_size=[120, 180], lr=8e-4
        ),
        "used_datas": ["data/train/organ/ct_AMOS"],
        "numpy_extra": np.arange(3, dtype=np.float32),
    }


def assert_same_outputs(a: Sam3D, b: Sam3D) -> None:
    x, pts = image(1, seed=20), prompts(1)
    with torch.inference_mode():
        ea, eb = a.encode(x), b.encode(x)
        assert torch.equal(ea, eb)
        ma, ia = a.decode(ea, pts, torch.zeros(1, 1, 32, 32, 32))
        mb, ib = b.decode(eb, pts, torch.zeros(1, 1, 32, 32, 32))
    assert torch.equal(ma, mb) and torch.equal(ia, ib)


def test_official_checkpoint_loads_strictly_with_identical_outputs(vit_b: Sam3D, tmp_path: Path) -> None:
    path = tmp_path / "sam_med3d_turbo.pth"
    payload = official_checkpoint(vit_b)
    assert isinstance(payload["lr_scheduler_state_dict"]["milestones"], collections.Counter)
    torch.save(payload, path)
    loaded = load_model(path)
    assert loaded.config.name == "vit_b_ori" and loaded.trained
    assert loaded.metadata == {"format": "sam-med3d", "epoch": 200, "best_loss": 0.5, "best_dice": 0.81}
    assert loaded.source == str(path.resolve())
    assert_same_outputs(vit_b, loaded)

    raw = tmp_path / "raw_state_dict.pth"
    torch.save(vit_b.state_dict(), raw)
    assert_same_outputs(vit_b, load_model(str(raw)))


def test_pesf_format_round_trip(tmp_path: Path) -> None:
    model = randomise(build_model("tiny", seed=21), seed=22)
    model.trained = True
    model.metadata = {"source": "unit test", "card": {"cases": 3, "organs": ["liver"]}}
    model.confidence_state_dict = {"head.weight": torch.randn(2, 3)}
    path = save_checkpoint(
        model, tmp_path / "out" / "model.pt", metadata={"epoch": 4}, extra={"optimizer_state_dict": {"x": 1}}
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temporary file left
    loaded = load_model(path)
    assert loaded.config == model.config and loaded.trained
    assert loaded.metadata["card"] == {"cases": 3, "organs": ["liver"]} and loaded.metadata["epoch"] == 4
    assert loaded.metadata["config_name"] == "tiny" and "created" in loaded.metadata
    assert torch.equal(
        loaded.confidence_state_dict["head.weight"], model.confidence_state_dict["head.weight"]
    )
    assert_same_outputs(model, loaded)


def test_save_checkpoint_rejects_non_plain_metadata(tmp_path: Path) -> None:
    model = build_model("tiny", seed=0)
    with pytest.raises(ValueError, match="plain data"):
        save_checkpoint(model, tmp_path / "m.pt", metadata={"args": argparse.Namespace(a=1)})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(model, tmp_path / "m.pt", extra={"state_dict": {}})
    assert not list(tmp_path.iterdir())


def test_failed_save_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model("tiny", seed=0)
    path = save_checkpoint(model, tmp_path / "m.pt")
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {}, "payload": _Evil(marker)}, path)
    with pytest.raises(PesfError, match=r"refusing to load .*_pwn") as excinfo:
        load_model(path)
    assert "\n" not in str(excinfo.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_file_gives_one_line_error(damage: str, tmp_path: Path) -> None:
    good = save_checkpoint(build_model("tiny", seed=0), tmp_path / "good.pt").read_bytes()
    data = {"truncated": good[: len(good) // 2], "garbage": os.urandom(4096), "empty": b""}[damage]
    path = tmp_path / "bad.pt"
    path.write_bytes(data)
    with pytest.raises(PesfError, match=r"is not a readable checkpoint \(truncated or corrupt\)") as excinfo:
        load_model(path)
    assert "\n" not in str(excinfo.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PesfError, match="checkpoint file not found"):
        load_model(tmp_path / "nope.pth")
    with pytest.raises(PesfError, match="checkpoint file not found"):
        load_model(str(tmp_path / "nope.pth"))


def test_other_architecture_is_named(tmp_path: Path) -> None:
    path = tmp_path / "tiny_as_official.pth"
    torch.save({"model_state_dict": build_model("tiny", seed=0).state_dict()}, path)
    with pytest.raises(
        PesfError, match=r"does not fit the vit_b_ori architecture .*looks like the tiny"
    ) as e:
        load_model(path)
    assert "\n" not in str(e.value)

    sam2d = {
        "image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
        "mask_decoder.x": torch.zeros(1),
    }
    torch.save({"model_state_dict": sam2d}, path)
    with pytest.raises(PesfError, match="looks like a 2D SAM model"):
        load_model(path)

    torch.save({"model": {"backbone.weight": torch.zeros(2)}}, path)
    with pytest.raises(PesfError, match="not a SAM-Med3D or PESF checkpoint"):
        load_model(path)


def test_bundled_names_and_untrained_default(resources: Path) -> None:
    default = load_model("default")
    assert not default.trained and default.config.name == DEFAULT_CONFIG
    info = model_info(default)
    assert info["trained"] is False and "untrained" in info["source"]
    assert_same_outputs(default, load_model("default"))  # deterministic stand-in

    with pytest.raises(PesfError, match=r"unknown model 'liver_v2'.*available: default"):
        load_model("liver_v2")

    tiny = randomise(build_model("tiny", seed=30), seed=31)
    tiny.trained = True
    save_checkpoint(tiny, resources / "Models" / "liver_v2.pt")
    loaded = load_model("liver_v2")
    assert "bundled model 'liver_v2'" in loaded.source
    assert_same_outputs(tiny, loaded)
    assert pesf.models.available_models() == ["default", "liver_v2"]

    save_checkpoint(tiny, resources / "Models" / "default.pt")
    assert load_model("default").trained


def test_model_info_counts_parameters() -> None:
    model = build_model("tiny", seed=0)
    info = model_info(model)
    params = info["parameters"]
    assert params["total"] == sum(p.numel() for p in model.parameters())
    assert params["total"] == params["image_encoder"] + params["prompt_encoder"] + params["mask_decoder"]
    assert info["name"] == "tiny" and info["config"]["encoder_depth"] == 4 and info["trained"] is False


def test_unavailable_device_and_top_level_export() -> None:
    assert pesf.load_model is load_model
    if not torch.cuda.is_available():
        with pytest.raises(PesfError, match="not available"):
            load_model("default", device="cuda")
    with pytest.raises(PesfError, match="unknown device"):
        load_model("default", device="quantum")


def test_config_validation_and_round_trip() -> None:
    for cfg in CONFIGS.values():
        assert SamConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="window"):
        SamConfig(encoder_window_size=4)
    with pytest.raises(ValueError, match="unknown SamConfig fields"):
        SamConfig.from_dict({"bogus": 1})
