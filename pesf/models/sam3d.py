"""The promptable model: SAM-Med3D's ``Sam3D`` (image encoder, prompt encoder, mask decoder)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from .config import SamConfig, get_config
from .image_encoder import ImageEncoder3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D

__all__ = ["Sam3D", "build_model"]

logger = logging.getLogger(__name__)


class Sam3D(nn.Module):
    """SAM-Med3D: ``image_encoder``, ``prompt_encoder``, ``mask_decoder`` (state-dict keys as SAM-Med3D's).

    Attributes:
        config: the :class:`SamConfig` it was built from.
        trained: ``False`` for freshly initialised weights.
        source: where the weights came from (a path, a bundled name, or ``"untrained"``).
        metadata: plain dict carried with the weights (training card, creation time, ...).
        confidence_state_dict: weights of the PESF confidence module carried alongside, or ``None``.
        confidence_module: the rebuilt confidence module (predicted Dice of a mask, see
            :mod:`pesf.models.confidence`), or ``None``. It is deliberately *not* a registered submodule:
            ``state_dict()``, ``parameters()`` and strict loading see only the official SAM-Med3D keys, while
            ``.to()``, ``.half()``, ``.train()`` and ``.eval()`` still reach it. Its weights travel in the
            checkpoint's ``confidence_state_dict`` and ``confidence_config``.
    """

    mask_threshold: float = 0.0

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder3D(config)
        self.prompt_encoder = PromptEncoder3D(config)
        self.mask_decoder = MaskDecoder3D(config)
        self.trained = False
        self.source = "untrained"
        self.metadata: dict[str, Any] = {}
        self.confidence_state_dict: dict[str, Tensor] | None = None
        self.confidence_module: nn.Module | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "confidence_module":
            # kept out of ``_modules`` so the state dict stays exactly SAM-Med3D's
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def _apply(self, fn: Any, recurse: bool = True) -> Sam3D:
        super()._apply(fn, recurse)
        module = self.__dict__.get("confidence_module")
        if module is not None and recurse:
            module._apply(fn)
        return self

    def train(self, mode: bool = True) -> Sam3D:
        super().train(mode)
        module = self.__dict__.get("confidence_module")
        if module is not None:
            module.train(mode)
        return self

    @property
    def device(self) -> torch.device:
        return self.mask_decoder.iou_token.weight.device

    def encode(self, image: Tensor) -> Tensor:
        """Region ``(B, 1, 128, 128, 128)`` to image embedding ``(B, E, 8, 8, 8)`` (``vit_b_ori`` sizes)."""
        return self.image_encoder(image)

    def decode(
        self,
        image_embeddings: Tensor,
        points: tuple[Tensor, Tensor] | None = None,
        mask_logits: Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Prompt encoder and mask decoder on a cached embedding.

        Args:
            image_embeddings: ``(B, E, g, g, g)`` (or ``(1, ...)`` shared by all prompts).
            points: ``(coords (B, N, 3) float, labels (B, N) int)``; coords are voxel indices in the region,
                in the axis order of the region tensor; labels 1 positive, 0 negative, -1 padding.
            mask_logits: previous low-resolution logits ``(B, 1, 4g, 4g, 4g)`` or ``None``.
            multimask_output: return the 3 ambiguity masks.

        Returns:
            ``low_res_masks`` ``(B, M, 4g, 4g, 4g)`` logits and ``iou_pred`` ``(B, M)``.
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=mask_logits)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def forward(
        self,
        image: Tensor,
        points: tuple[Tensor, Tensor] | None = None,
        mask_logits: Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`encode` then :meth:`decode`; shapes as there."""
        return self.decode(self.encode(image), points, mask_logits, multimask_output)


def build_model(config: str | SamConfig, seed: int | None = None) -> Sam3D:
    """A freshly initialised (untrained) model.

    Args:
        config: a :class:`SamConfig` or the name of one in :data:`pesf.models.config.CONFIGS`.
        seed: seed for the initialisation (the global RNG is left untouched); ``None`` for the global RNG.

    Returns:
        The model in eval mode, ``trained`` is ``False``.
    """
    cfg = get_config(config) if isinstance(config, str) else config
    if seed is None:
        model = Sam3D(cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Sam3D(cfg)
    model.source = f"untrained {cfg.name}"
    return model.eval()
