"""Exact, fast computation of SAM-Med3D's encoder attention.

What SAM-Med3D computes
-----------------------
A windowed block (``window_size`` 14) pads the normalised ``8^3`` token grid with zero tokens to one ``14^3``
window, runs the attention over all ``L^3 = 2744`` positions and crops the result back to ``8^3``. A global
block does the same on the ``8^3`` grid without padding (``L = 8``). The attention logit of query
``p = (i, j, l)`` and key ``t = (a, b, c)`` (window coordinates ``0 <= . < L``) is::

    scale * q_p . k_t  +  q_(i,j,l) . Rd[i, c]  +  q_(i,j,a) . Rh[j, c]  +  q_(i,j,b) . Rw[b, c]

with ``R*[x, y] = rel_pos_*[x - y + L - 1]``. This is *not* the textbook decomposed bias
(``Rd[i, a] + Rh[j, b] + Rw[l, c]``): SAM-Med3D's ``add_decomposed_rel_pos`` broadcasts its three
``(B, L, L, L, L)`` terms with index patterns that align them with the key axes shown above (all axes are 14,
so the shapes agree and nothing fails). Trained checkpoints depend on it, so it is reproduced as is.

How it is computed here
-----------------------
Padded tokens are zero before ``qkv``, so their key, value and query are the ``qkv`` biases ``b_k, b_v, b_q``.
For the ``N = 512`` real queries, keys split into the ``N`` real ones and the padded ones. The real keys get
the bias above as an additive ``(N, N)`` mask. All padded keys share the key ``b_k`` and value ``b_v``, so
together they act as one extra key ``b_k`` with value ``b_v`` whose logit is ``scale * q_p . b_k + log Z(p)``,
where ``Z(p)`` is the summed exponentiated bias over padded positions. For a fixed ``c`` the bias separates
into a term in ``a`` and a term in ``b``, hence with ``Ha(c) = sum_a exp(H(a, c))``, ``Wb(c)`` likewise and
``in``/``out`` marking sums over real (``< 8``) or padded (``>= 8``) coordinates::

    Z(p) = sum_{c < 8} e^D(p,c) (Ha_out Wb_all + Ha_in Wb_out)  +  sum_{c >= 8} e^D(p,c) Ha_all Wb_all

a sum of positive terms with no cancellation, evaluated in log space (``logsumexp``). The attention itself is
one :func:`torch.nn.functional.scaled_dot_product_attention` call over ``N + 1`` keys, batched over heads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .image_encoder import EncoderAttention

__all__ = ["fast_attention", "relative_table"]


def relative_table(table: Tensor, rows: int, extent: int) -> Tensor:
    """Gather a relative position table into ``R[x, y] = table[x - y + extent - 1]``.

    Args:
        table: ``(2 * extent - 1, head_dim)``.
        rows: number of query rows ``x`` to return (``<= extent``).
        extent: window edge ``L``; ``y`` runs over ``0 .. L - 1``.

    Returns:
        ``(rows, extent, head_dim)``.
    """
    if table.shape[0] != 2 * extent - 1:
        raise ValueError(f"relative position table has {table.shape[0]} rows, expected {2 * extent - 1}")
    x = torch.arange(rows, device=table.device)[:, None]
    y = torch.arange(extent, device=table.device)[None, :]
    return table[x - y + extent - 1]


def _log_padded_mass(d_term: Tensor, h_term: Tensor, w_term: Tensor, size: int) -> Tensor:
    """``log Z(p)``: log of the summed exponentiated bias over the padded keys.

    Args:
        d_term: ``(B, h, S, S, S, L)``, ``D[i, j, l, c]``.
        h_term: ``(B, h, S, S, L, L)``, ``H[i, j, a, c]``.
        w_term: ``(B, h, S, S, L, L)``, ``W[i, j, b, c]``.
        size: real extent ``S`` per axis.

    Returns:
        ``(B, h, S, S, S)``.
    """
    h_in = torch.logsumexp(h_term[..., :size, :], dim=-2)  # (B, h, S, S, L) over a
    h_out = torch.logsumexp(h_term[..., size:, :], dim=-2)
    w_in = torch.logsumexp(w_term[..., :size, :], dim=-2)
    w_out = torch.logsumexp(w_term[..., size:, :], dim=-2)
    h_all = torch.logaddexp(h_in, h_out)
    w_all = torch.logaddexp(w_in, w_out)
    # Per key column c: padded (a, b) pairs for real c, all pairs for padded c.
    per_c = torch.cat(
        [
            torch.logaddexp(h_out + w_all, h_in + w_out)[..., :size],
            (h_all + w_all)[..., size:],
        ],
        dim=-1,
    )  # (B, h, S, S, L)
    return torch.logsumexp(d_term + per_c[:, :, :, :, None, :], dim=-1)


def fast_attention(attn: EncoderAttention, x: Tensor) -> Tensor:
    """SAM-Med3D's (padded-window or global) encoder attention, computed over the real tokens only.

    Gives the same result as padding ``x`` with zero tokens to one ``window_size^3`` window, attending over
    the whole window with SAM-Med3D's relative position bias and cropping (see the module docstring).

    Args:
        attn: the block's :class:`~pesf.models.image_encoder.EncoderAttention` (weights, heads, window).
        x: normalised tokens ``(B, S, S, S, C)``.

    Returns:
        ``attn.proj`` of the attention output, ``(B, S, S, S, C)``.
    """
    bsz, s0, s1, s2, dim = x.shape
    if not s0 == s1 == s2:
        raise ValueError(f"the encoder attention needs a cubic token grid, got {s0}x{s1}x{s2}")
    size = s0
    extent = attn.window_size if attn.window_size > 0 else size
    if extent < size:
        raise ValueError(f"window {extent} smaller than the token grid {size} is not supported")
    heads, hd = attn.num_heads, attn.head_dim
    n = size**3

    qkv = attn.qkv(x).reshape(bsz, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, h, N, hd)
    bias_qkv = attn.qkv.bias if attn.qkv.bias is not None else x.new_zeros(3 * dim)
    b_q, b_k, b_v = (t.reshape(1, heads, 1, hd) for t in bias_qkv.split(dim))

    q_grid = q.reshape(bsz, heads, size, size, size, hd)
    if extent > size:
        # Queries along the last window axis, padded ones included: the H and W terms use them.
        pad = b_q.reshape(1, heads, 1, 1, 1, hd).expand(bsz, heads, size, size, extent - size, hd)
        q_line = torch.cat([q_grid, pad], dim=4)
    else:
        q_line = q_grid
    rd = relative_table(attn.rel_pos_d, size, extent)  # (S, L, hd)
    rh = relative_table(attn.rel_pos_h, size, extent)  # (S, L, hd)
    rw = relative_table(attn.rel_pos_w, extent, extent)  # (L, L, hd)
    d_term = torch.einsum("znijlx,icx->znijlc", q_grid, rd)  # (B, h, S, S, S, L)
    h_term = torch.einsum("znijax,jcx->znijac", q_line, rh)  # (B, h, S, S, L, L)
    w_term = torch.einsum("znijbx,bcx->znijbc", q_line, rw)  # (B, h, S, S, L, L)

    # Additive mask over the keys: the real keys (a, b, c), then the padded keys merged into one. It is
    # filled in place (copy_/add_ on views of one fresh tensor): cheaper than broadcast sums and a cat, and
    # still differentiable.
    s = size
    padded = extent > size
    mask = q.new_empty(bsz, heads, n, n + 1 if padded else n)
    body = mask[..., :n].view(bsz, heads, s, s, s, s, s, s)  # query (i, j, l), key (a, b, c)
    body.copy_(d_term[:, :, :, :, :, None, None, :s] + h_term[:, :, :, :, None, :s, None, :s])
    body.add_(w_term[:, :, :, :, None, None, :s, :s])
    if padded:
        mask[..., n:] = _log_padded_mass(d_term, h_term, w_term, size).reshape(bsz, heads, n, 1)
        k = torch.cat([k, b_k.expand(bsz, heads, 1, hd)], dim=2)
        v = torch.cat([v, b_v.expand(bsz, heads, 1, hd)], dim=2)

    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
    out = out.transpose(1, 2).reshape(bsz, s0, s1, s2, dim)
    return attn.proj(out)
