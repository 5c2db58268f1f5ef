"""The SAM-Med3D prompt encoder: clicks and a previous mask to decoder tokens.

Point coordinates are continuous voxel indices inside the model's input region, in the axis order of the
region tensor: ``coords[..., a]`` indexes spatial axis ``a`` of the ``(B, 1, X, Y, Z)`` image given to the
image encoder (axis 0 is ``X``, dimension 2 of that tensor). This is what SAM-Med3D's training and inference
code feed (``torch.argwhere`` on the region mask). A voxel index is shifted by 0.5 to its centre before
encoding, as in SAM-Med3D.

SAM-Med3D's dense positional code (:meth:`PromptEncoder3D.get_dense_pe`) encodes the embedding cell
``(u, v, w)`` as the normalised point ``((v + .5) / g, (u + .5) / g, (w + .5) / g)``: its first two
coordinates are swapped relative to the point code. Released weights were trained with both as they are, so
both are reproduced unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import SamConfig
from .image_encoder import LayerNorm3d

__all__ = ["PositionEmbeddingRandom3D", "PromptEncoder3D"]


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of 3D points in ``[0, 1]^3``: ``sin, cos, sin`` of ``2 pi (2x - 1) G``.

    Attributes:
        positional_encoding_gaussian_matrix: buffer ``(3, num_pos_feats)``, part of the state dict.
    """

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def encode(self, coords: Tensor) -> Tensor:
        """Encode normalised points ``(..., 3)`` in ``[0, 1]`` to ``(..., 3 * num_pos_feats)``."""
        proj = (2.0 * coords - 1.0) @ self.positional_encoding_gaussian_matrix
        proj = 2.0 * math.pi * proj
        return torch.cat([torch.sin(proj), torch.cos(proj), torch.sin(proj)], dim=-1)

    def grid(self, size: tuple[int, int, int]) -> Tensor:
        """The code of every cell of a ``size`` grid, ``(3 * num_pos_feats, X, Y, Z)``, SAM-Med3D's layout."""
        sx, sy, sz = size
        device = self.positional_encoding_gaussian_matrix.device
        centres = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) for n in size]
        u, v, w = torch.meshgrid(*centres, indexing="ij")
        # SAM-Med3D stacks (axis-1 position / X, axis-0 position / Y, axis-2 position / Z).
        coords = torch.stack([v / sx, u / sy, w / sz], dim=-1)
        return self.encode(coords).permute(3, 0, 1, 2)

    def points(self, coords: Tensor, image_size: tuple[int, int, int]) -> Tensor:
        """Encode voxel-space points ``(B, N, 3)`` of an ``image_size`` region: ``(B, N, 3 * num_pos_feats)``."""
        scale = torch.tensor(image_size, dtype=torch.float32, device=coords.device)
        return self.encode(coords.to(torch.float32) / scale)


class PromptEncoder3D(nn.Module):
    """SAM-Med3D ``PromptEncoder3D``: points and a mask prompt to sparse and dense embeddings."""

    def __init__(self, config: SamConfig, activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        dim = config.prompt_embed_dim
        self.embed_dim = dim
        self.image_embedding_size = config.embedding_size
        self.input_image_size = (config.image_size,) * 3
        self.mask_input_size = config.low_res_mask_size
        self.pe_layer = PositionEmbeddingRandom3D(dim // 3)
        # point_embeddings[0]: negative click, [1]: positive click.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(2))
        self.not_a_point_embed = nn.Embedding(1, dim)
        chans = config.mask_in_chans
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(chans // 4),
            activation(),
            nn.Conv3d(chans // 4, chans, kernel_size=2, stride=2),
            LayerNorm3d(chans),
            activation(),
            nn.Conv3d(chans, dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def get_dense_pe(self) -> Tensor:
        """Positional code of the image embedding grid, ``(1, embed_dim, g, g, g)``."""
        return self.pe_layer.grid(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, coords: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """Points ``(B, N, 3)`` with labels ``(B, N)`` to tokens ``(B, N (+1 if pad), embed_dim)``.

        Label 1 is a positive click, 0 a negative click, -1 "not a point" (its positional code is dropped).
        With ``pad`` one "not a point" token is appended, as SAM-Med3D does when no box is given.
        """
        coords = coords.to(torch.float32) + 0.5
        if pad:
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 3)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        tokens = self.pe_layer.points(coords, self.input_image_size)
        lab = labels[..., None]
        tokens = torch.where(lab == -1, torch.zeros_like(tokens), tokens)
        tokens = tokens + (lab == -1) * self.not_a_point_embed.weight
        tokens = tokens + (lab == 0) * self.point_embeddings[0].weight
        tokens = tokens + (lab == 1) * self.point_embeddings[1].weight
        return tokens

    def forward(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Embed the prompts of a batch.

        Args:
            points: ``(coords, labels)``; coords ``(B, N, 3)`` float voxel indices in the region, in the axis
                order of the region tensor (see the module docstring); labels ``(B, N)`` int, 1 positive,
                0 negative, -1 padding. ``None`` for no clicks.
            boxes: unsupported (SAM-Med3D has no trained box prompt); must be ``None``.
            masks: previous mask logits ``(B, 1, 4g, 4g, 4g)`` (``(B, 1, 32, 32, 32)``) or ``None``.

        Returns:
            ``sparse`` ``(B, N + 1, embed_dim)`` (``(B, 0, embed_dim)`` without points) and ``dense``
            ``(B, embed_dim, g, g, g)``.
        """
        if boxes is not None:
            raise ValueError("box prompts are not supported: SAM-Med3D has no trained box embedding")
        if points is not None:
            bsz = points[0].shape[0]
        elif masks is not None:
            bsz = masks.shape[0]
        else:
            bsz = 1
        device = self.no_mask_embed.weight.device
        if points is not None:
            coords, labels = points
            if coords.ndim != 3 or coords.shape[-1] != 3 or tuple(labels.shape) != tuple(coords.shape[:2]):
                raise ValueError(
                    f"points must be coords (B, N, 3) and labels (B, N), got {tuple(coords.shape)} "
                    f"and {tuple(labels.shape)}"
                )
            sparse = self._embed_points(coords, labels, pad=True)
        else:
            sparse = torch.empty(bsz, 0, self.embed_dim, device=device)
        if masks is not None:
            if tuple(masks.shape[1:]) != (1, *self.mask_input_size):
                raise ValueError(
                    f"mask prompt must be (B, 1, {', '.join(map(str, self.mask_input_size))}), "
                    f"got {tuple(masks.shape)}"
                )
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(
                bsz, -1, *self.image_embedding_size
            )
        return sparse, dense
