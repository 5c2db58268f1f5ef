"""Reference for the encoder attention: SAM-Med3D's padded-window computation, step by step.

Test-suite only. It materialises the padded window exactly as SAM-Med3D's ``Block3D`` / ``Attention`` do
(zero-pad the normalised tokens to a multiple of the window, split into windows, full attention over every
window position with the relative position bias broadcast as ``add_decomposed_rel_pos`` broadcasts it, output
projection, merge the windows, crop) so :func:`pesf.models.windowed_attention.fast_attention` can be checked
against it. Plug it in with ``encoder.set_attention_kernel(padded_reference_attention)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pesf.models.image_encoder import EncoderAttention

__all__ = ["padded_reference_attention"]


def _pad_and_split(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int, int]]:
    """Zero-pad ``(B, D, H, W, C)`` at the far end of each axis to a multiple of ``window`` and split it into
    ``(B * n_windows, window, window, window, C)``; also return the padded grid size."""
    b, d, h, w, c = x.shape
    pd, ph, pw = ((window - s % window) % window for s in (d, h, w))
    x = F.pad(x, (0, 0, 0, pw, 0, ph, 0, pd))
    dp, hp, wp = d + pd, h + ph, w + pw
    x = x.view(b, dp // window, window, hp // window, window, wp // window, window, c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window, window, window, c)
    return x, (dp, hp, wp)


def _merge_and_crop(
    windows: Tensor, window: int, padded: tuple[int, int, int], size: tuple[int, ...]
) -> Tensor:
    """Inverse of :func:`_pad_and_split`, dropping the padding."""
    dp, hp, wp = padded
    nd, nh, nw = dp // window, hp // window, wp // window
    b = windows.shape[0] // (nd * nh * nw)
    x = windows.view(b, nd, nh, nw, window, window, window, -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, dp, hp, wp, -1)
    d, h, w = size
    return x[:, :d, :h, :w, :].contiguous()


def _gathered(table: Tensor, extent: int) -> Tensor:
    """``R[x, y] = table[x - y + extent - 1]`` for ``x, y < extent``: ``(extent, extent, head_dim)``."""
    idx = torch.arange(extent)[:, None] - torch.arange(extent)[None, :] + extent - 1
    return table[idx]


def _attention_over_windows(attn: EncoderAttention, windows: Tensor) -> Tensor:
    """SAM-Med3D ``Attention.forward`` on ``(n, L, L, L, C)`` windows, relative bias included."""
    n, d, h, w, c = windows.shape
    heads = attn.num_heads
    qkv = attn.qkv(windows).reshape(n, d * h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, n * heads, d * h * w, -1).unbind(0)
    logits = (q * attn.scale) @ k.transpose(-2, -1)

    rd, rh, rw = _gathered(attn.rel_pos_d, d), _gathered(attn.rel_pos_h, h), _gathered(attn.rel_pos_w, w)
    q_grid = q.reshape(n * heads, d, h, w, -1)
    rel_d = torch.einsum("zdhwc,dkc->zdhwk", q_grid, rd)
    rel_h = torch.einsum("zdhwc,hkc->zdhwk", q_grid, rh)
    rel_w = torch.einsum("zdhwc,wkc->zdhwk", q_grid, rw)
    # The index patterns SAM-Med3D uses; each term is a 5-D tensor, so the trailing key axis of every term
    # lands on the last key axis (k_w) of the 7-D logit view. Kept verbatim in meaning: the weights expect it.
    logits = (
        logits.view(n * heads, d, h, w, d, h, w)
        + rel_d[:, :, :, :, None, None]
        + rel_h[:, :, :, None, :, None]
        + rel_w[:, :, :, None, None, :]
    ).view(n * heads, d * h * w, d * h * w)

    probs = logits.softmax(dim=-1)
    out = (probs @ v).view(n, heads, d, h, w, -1).permute(0, 2, 3, 4, 1, 5).reshape(n, d, h, w, -1)
    return attn.proj(out)


def padded_reference_attention(attn: EncoderAttention, x: Tensor) -> Tensor:
    """The attention branch of a SAM-Med3D block, computed as SAM-Med3D computes it.

    Args:
        attn: the block's attention module.
        x: normalised tokens ``(B, D, H, W, C)``.

    Returns:
        ``(B, D, H, W, C)``.
    """
    if attn.window_size <= 0:
        return _attention_over_windows(attn, x)
    size = tuple(x.shape[1:4])
    windows, padded = _pad_and_split(x, attn.window_size)
    out = _attention_over_windows(attn, windows)
    return _merge_and_crop(out, attn.window_size, padded, size)
