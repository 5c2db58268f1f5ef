"""The SAM-Med3D mask decoder: image embedding and prompt tokens to mask logits and IoU estimates.

Parameter names and shapes equal SAM-Med3D's ``MaskDecoder3D`` so checkpoints load strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SamConfig
from .image_encoder import LayerNorm3d
from .transformer import TwoWayTransformer3D

__all__ = ["MaskDecoder3D", "MLP"]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (``layers.0`` ... ``layers.{n-1}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        """``(..., input_dim) -> (..., output_dim)``."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder3D(nn.Module):
    """SAM-Med3D ``MaskDecoder3D``: predicts ``1 + num_multimask_outputs`` masks and their IoU."""

    def __init__(self, config: SamConfig, activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        dim = config.prompt_embed_dim
        self.transformer_dim = dim
        self.transformer = TwoWayTransformer3D(
            depth=config.decoder_depth,
            embedding_dim=dim,
            num_heads=config.decoder_num_heads,
            mlp_dim=config.decoder_mlp_dim,
            attention_downsample_rate=config.decoder_attention_downsample_rate,
        )
        self.num_multimask_outputs = config.num_multimask_outputs
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm3d(dim // 4),
            activation(),
            nn.ConvTranspose3d(dim // 4, dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            dim, config.iou_head_hidden_dim, self.num_mask_tokens, config.iou_head_depth
        )

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Predict masks.

        Args:
            image_embeddings: ``(B, E, g, g, g)``, or ``(1, E, g, g, g)`` shared by all ``B`` prompts.
            image_pe: ``(1, E, g, g, g)`` from ``PromptEncoder3D.get_dense_pe``.
            sparse_prompt_embeddings: ``(B, N, E)``.
            dense_prompt_embeddings: ``(B, E, g, g, g)``.
            multimask_output: return the 3 ambiguity masks instead of the single-mask output.

        Returns:
            ``low_res_masks`` ``(B, M, 4g, 4g, 4g)`` logits (``M`` = 1, or 3 with ``multimask_output``) and
            ``iou_pred`` ``(B, M)``.
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou_pred[:, chosen]

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """All ``1 + num_multimask_outputs`` masks ``(B, M, 4g, 4g, 4g)`` and IoU estimates ``(B, M)``."""
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        bsz = sparse_prompt_embeddings.shape[0]
        output_tokens = output_tokens.unsqueeze(0).expand(bsz, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        # As SAM-Med3D: an embedding batch that differs from the prompt batch is repeated per prompt.
        src = image_embeddings
        if src.shape[0] != bsz:
            src = torch.repeat_interleave(src, bsz, dim=0)
        src = src + dense_prompt_embeddings
        pos = image_pe if image_pe.shape[0] == bsz else torch.repeat_interleave(image_pe, bsz, dim=0)
        b, c, x, y, z = src.shape

        hs, src = self.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, x, y, z))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, x, y, z = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, x * y * z)).reshape(b, -1, x, y, z)
        return masks, self.iou_prediction_head(iou_token_out)
