"""A geometric stand-in for a SAM-Med3D model, used to test the session's geometry exactly.

It has the three submodules and forward signatures of SAM-Med3D, but its "decoder" draws a ball of
``radius`` region voxels around every positive point and removes one around every negative point, so the
result of a click is known in physical space and any error of orientation, spacing, origin or paste-back
shows up as a misplaced ball.
"""

from __future__ import annotations

import torch
from torch import nn


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv3d(1, 4, kernel_size=16, stride=16)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.proj(x)


class _PromptEncoder(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1, 4, self.size // 16, self.size // 16, self.size // 16)

    def forward(self, points, boxes=None, masks=None):
        coords, labels = points
        return torch.cat([coords, labels[..., None].float()], dim=-1), masks


class _Decoder(nn.Module):
    def __init__(self, size: int, radius: float) -> None:
        super().__init__()
        self.size = size
        self.radius = radius

    def forward(
        self,
        image_embeddings,
        image_pe,
        sparse_prompt_embeddings,
        dense_prompt_embeddings,
        multimask_output=False,
    ):
        s4 = self.size // 4
        # low-res voxel c covers region voxels [4c, 4c+4): its centre is at 4c + 1.5
        grid = torch.stack(torch.meshgrid(*[torch.arange(s4) * 4.0 + 1.5] * 3, indexing="ij"), dim=-1)
        out = []
        for pts in sparse_prompt_embeddings:
            logit = torch.full((s4, s4, s4), -10.0)
            for p in pts:
                d = (grid - p[:3]).norm(dim=-1)
                ball = (self.radius - d) * 2.0
                logit = torch.maximum(logit, ball) if p[3] > 0 else torch.minimum(logit, -ball)
            out.append(logit)
        low = torch.stack(out)[:, None]
        return low, torch.zeros(low.shape[0], 1)


class BallModel(nn.Module):
    """SAM-Med3D-shaped module whose mask is a ball of ``radius`` region voxels around each click."""

    def __init__(self, size: int = 128, radius: float = 6.0) -> None:
        super().__init__()
        self.image_encoder = _Encoder()
        self.prompt_encoder = _PromptEncoder(size)
        self.mask_decoder = _Decoder(size, radius)
