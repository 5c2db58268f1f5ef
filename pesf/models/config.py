"""Named configurations of the SAM-Med3D architecture.

Every configuration builds the same code (:class:`pesf.models.sam3d.Sam3D`); only sizes differ. All share the
input geometry of SAM-Med3D ``vit_b_ori``: a ``128^3`` single-channel region, ``16^3`` patches, an ``8^3`` token
grid and ``32^3`` low-resolution mask logits, so the region-of-interest pipeline is the same for all of them.

``vit_b_ori`` is the official SAM-Med3D configuration (``build_sam3D_vit_b_ori``): its state dict loads the
released checkpoints strictly. ``small`` and ``tiny`` are CPU-sized variants for the default model and tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["SamConfig", "CONFIGS", "DEFAULT_CONFIG", "get_config"]


@dataclass(frozen=True)
class SamConfig:
    """Sizes of a SAM-Med3D style model.

    Attributes:
        name: configuration name (``vit_b_ori``, ``small``, ``tiny`` or ``custom``).
        image_size: edge of the cubic input region in voxels.
        patch_size: edge of a cubic patch; ``image_size // patch_size`` tokens per axis.
        in_chans: input channels.
        encoder_embed_dim: ViT token width.
        encoder_depth: number of ViT blocks.
        encoder_num_heads: attention heads per ViT block.
        encoder_mlp_ratio: hidden width of the block MLP relative to ``encoder_embed_dim``.
        encoder_global_attn_indexes: blocks that attend globally; the others use windows.
        encoder_window_size: window edge in tokens for the windowed blocks (0: all global). SAM-Med3D uses 14,
            larger than the 8-token grid, so its windowed blocks pad the grid to one ``14^3`` window.
        prompt_embed_dim: width of the image embedding, the prompt tokens and the decoder.
        mask_in_chans: hidden channels of the mask-prompt downscaler.
        decoder_depth: two-way transformer blocks in the mask decoder.
        decoder_mlp_dim: hidden width of the decoder MLP.
        decoder_num_heads: attention heads in the decoder.
        decoder_attention_downsample_rate: width reduction of the decoder's cross attentions.
        num_multimask_outputs: extra mask tokens for ambiguous prompts.
        iou_head_depth: layers of the IoU prediction MLP.
        iou_head_hidden_dim: hidden width of the IoU prediction MLP.
    """

    name: str = "custom"
    image_size: int = 128
    patch_size: int = 16
    in_chans: int = 1
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_mlp_ratio: float = 4.0
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    encoder_window_size: int = 14
    prompt_embed_dim: int = 384
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    decoder_attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_global_attn_indexes", tuple(self.encoder_global_attn_indexes))
        problems = []
        if self.image_size % self.patch_size:
            problems.append("image_size must be a multiple of patch_size")
        if self.encoder_embed_dim % self.encoder_num_heads:
            problems.append("encoder_embed_dim must be a multiple of encoder_num_heads")
        if self.encoder_window_size and self.encoder_window_size < self.grid_size:
            problems.append(
                f"encoder_window_size must be 0 or at least the token grid ({self.grid_size}): "
                "several windows per axis are not supported"
            )
        if any(not 0 <= i < self.encoder_depth for i in self.encoder_global_attn_indexes):
            problems.append("encoder_global_attn_indexes must lie in [0, encoder_depth)")
        if self.prompt_embed_dim % 24:
            problems.append(
                "prompt_embed_dim must be a multiple of 24 (3 for the positional code, 8 for upscaling)"
            )
        internal = self.prompt_embed_dim // self.decoder_attention_downsample_rate
        if self.prompt_embed_dim % self.decoder_num_heads or internal % self.decoder_num_heads:
            problems.append("decoder_num_heads must divide prompt_embed_dim and its downsampled width")
        if self.mask_in_chans % 4:
            problems.append("mask_in_chans must be a multiple of 4")
        if problems:
            raise ValueError(f"invalid SamConfig {self.name!r}: " + "; ".join(problems))

    @property
    def grid_size(self) -> int:
        """Tokens per axis of the image embedding (8 for a 128^3 region with 16^3 patches)."""
        return self.image_size // self.patch_size

    @property
    def embedding_size(self) -> tuple[int, int, int]:
        """Spatial shape of the image embedding ``(g, g, g)``."""
        g = self.grid_size
        return (g, g, g)

    @property
    def low_res_mask_size(self) -> tuple[int, int, int]:
        """Spatial shape of the decoder's mask logits (and of the mask prompt): ``4 * grid``."""
        s = 4 * self.grid_size
        return (s, s, s)

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` (lists, ints, floats, strings) suitable for a weights-only checkpoint."""
        d = asdict(self)
        d["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamConfig:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on unknown keys or inconsistent sizes."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SamConfig fields: {', '.join(unknown)}")
        return cls(**data)

    def with_name(self, name: str) -> SamConfig:
        """A copy under another name."""
        return replace(self, name=name)


CONFIGS: dict[str, SamConfig] = {
    # SAM-Med3D build_sam3D_vit_b_ori: the released checkpoints (sam_med3d_turbo.pth and kin).
    "vit_b_ori": SamConfig(name="vit_b_ori"),
    # A quarter of the encoder compute of vit_b_ori; CPU-friendly default model.
    "small": SamConfig(
        name="small",
        encoder_embed_dim=384,
        encoder_depth=6,
        encoder_num_heads=6,
        encoder_global_attn_indexes=(2, 5),
        prompt_embed_dim=192,
        decoder_mlp_dim=1024,
        iou_head_hidden_dim=128,
    ),
    # For tests and smoke runs.
    "tiny": SamConfig(
        name="tiny",
        encoder_embed_dim=96,
        encoder_depth=4,
        encoder_num_heads=3,
        encoder_global_attn_indexes=(1, 3),
        prompt_embed_dim=96,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    ),
}

DEFAULT_CONFIG = "tiny"
"""Configuration of the untrained stand-in returned for ``default`` when no bundled model exists yet."""


def get_config(name: str) -> SamConfig:
    """The named configuration; raises ``KeyError`` listing the known names."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model configuration {name!r} (known: {', '.join(CONFIGS)})") from None
