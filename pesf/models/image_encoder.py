"""The SAM-Med3D image encoder: a 3D ViT with relative position bias and a convolutional neck.

Parameter names and shapes equal those of SAM-Med3D's ``ImageEncoderViT3D`` so official checkpoints load
strictly. The attention of every block is computed by a swappable *kernel* (see :data:`AttentionKernel`); the
default, :func:`pesf.models.windowed_attention.fast_attention`, reproduces SAM-Med3D's padded-window
computation exactly while attending only over the real tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SamConfig
from .windowed_attention import fast_attention

__all__ = ["AttentionKernel", "EncoderAttention", "EncoderBlock", "ImageEncoder3D", "LayerNorm3d", "MLPBlock"]

logger = logging.getLogger(__name__)

AttentionKernel = Callable[["EncoderAttention", Tensor], Tensor]
"""``kernel(attn, x) -> y``: the attention branch of a block.

``x`` is the normalised token grid ``(B, S, S, S, C)``; ``y`` is the output of ``attn.proj``, same shape.
"""


class LayerNorm3d(nn.Module):
    """Layer normalisation over the channel axis of a ``(B, C, X, Y, Z)`` tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` ``(B, C, X, Y, Z)`` per voxel across channels."""
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None, None] + self.bias[:, None, None, None]


class MLPBlock(nn.Module):
    """Two linear layers with an activation in between (``lin1``, ``act``, ``lin2``)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        """``(..., embedding_dim) -> (..., embedding_dim)``."""
        return self.lin2(self.act(self.lin1(x)))


class PatchEmbed3D(nn.Module):
    """Cut the volume into non-overlapping cubic patches and project each to a token.

    The weights live in a ``Conv3d`` (``proj``) as in SAM-Med3D; the forward pass computes the same thing as
    one matrix product, which is several times faster on CPUs than a strided 3D convolution.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_chans, X, Y, Z) -> (B, X/p, Y/p, Z/p, embed_dim)``."""
        b, c, sx, sy, sz = x.shape
        p = self.patch_size
        gx, gy, gz = sx // p, sy // p, sz // p
        patches = x.reshape(b, c, gx, p, gy, p, gz, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        patches = patches.reshape(b, gx, gy, gz, c * p * p * p)
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)
        return F.linear(patches, weight, self.proj.bias)


class EncoderAttention(nn.Module):
    """Multi-head self-attention with SAM-Med3D's decomposed relative position tables.

    Attributes:
        qkv: ``Linear(dim, 3 * dim)``; query, key and value for every head.
        proj: output projection ``Linear(dim, dim)``.
        rel_pos_d, rel_pos_h, rel_pos_w: relative position tables ``(2 * extent - 1, head_dim)``, where the
            extent is the window size for windowed blocks and the token grid for global ones.
        window_size: window edge in tokens, 0 for global attention.
        kernel: the :data:`AttentionKernel` computing the forward pass.
    """

    def __init__(
        self, dim: int, num_heads: int, window_size: int, grid_size: int, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_size = window_size
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        extent = window_size if window_size > 0 else grid_size
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * extent - 1, self.head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * extent - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * extent - 1, self.head_dim))
        self.kernel: AttentionKernel = fast_attention

    def forward(self, x: Tensor) -> Tensor:
        """``(B, S, S, S, dim) -> (B, S, S, S, dim)``."""
        return self.kernel(self, x)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        grid_size: int,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EncoderAttention(dim, num_heads, window_size, grid_size, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    @property
    def window_size(self) -> int:
        return self.attn.window_size

    def forward(self, x: Tensor) -> Tensor:
        """``(B, S, S, S, dim) -> (B, S, S, S, dim)``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ImageEncoder3D(nn.Module):
    """SAM-Med3D ``ImageEncoderViT3D``: region ``(B, 1, 128, 128, 128)`` to embedding ``(B, 384, 8, 8, 8)``.

    Sizes come from a :class:`SamConfig`; the shapes above are those of ``vit_b_ori``.
    """

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.config = config
        self.img_size = config.image_size
        g = config.grid_size
        dim = config.encoder_embed_dim
        self.patch_embed = PatchEmbed3D(config.patch_size, config.in_chans, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, g, dim))
        self.blocks = nn.ModuleList(
            EncoderBlock(
                dim,
                config.encoder_num_heads,
                config.encoder_mlp_ratio,
                0 if i in config.encoder_global_attn_indexes else config.encoder_window_size,
                g,
            )
            for i in range(config.encoder_depth)
        )
        out = config.prompt_embed_dim
        self.neck = nn.Sequential(
            nn.Conv3d(dim, out, kernel_size=1, bias=False),
            LayerNorm3d(out),
            nn.Conv3d(out, out, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out),
        )

    def set_attention_kernel(self, kernel: AttentionKernel | None) -> None:
        """Compute every block's attention with ``kernel`` (``None``: the default fast exact kernel)."""
        for block in self.blocks:
            block.attn.kernel = kernel if kernel is not None else fast_attention

    def forward(self, x: Tensor) -> Tensor:
        """Encode a batch of regions.

        Args:
            x: normalised intensities ``(B, in_chans, image_size, image_size, image_size)``.

        Returns:
            The image embedding ``(B, prompt_embed_dim, g, g, g)`` with ``g = image_size // patch_size``.
        """
        expected = (self.config.in_chans,) + (self.img_size,) * 3
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"image encoder expects (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))
