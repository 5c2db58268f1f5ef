"""Trilinear resampling between two voxel grids related by an affine map.

``out[p] = src[M @ p + t]`` for every output index ``p``, with trilinear interpolation and a fill value
outside ``src``. When ``M`` maps each output axis onto a single source axis (the usual case: both grids
are aligned with the patient axes, whatever their flips and permutations), the interpolation is done one
axis at a time, which costs a few passes over the output instead of building a full sampling grid.
Otherwise :func:`torch.nn.functional.grid_sample` handles any oblique direction.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["resample_affine", "axis_permutation", "inside_mask"]


def axis_permutation(m: np.ndarray, tol: float = 1e-6) -> list[int] | None:
    """If each row of ``m`` has exactly one non-zero entry (in distinct columns), return their columns.

    ``m[a, b]`` is how far source axis ``a`` moves for one step along output axis ``b``. The returned
    list ``perm`` satisfies ``m[a, perm[a]] != 0``: source axis ``a`` depends only on output axis
    ``perm[a]``.
    """
    nz = np.abs(m) > tol * np.abs(m).max()
    if not np.all(nz.sum(axis=1) == 1) or not np.all(nz.sum(axis=0) == 1):
        return None
    return [int(np.flatnonzero(nz[a])[0]) for a in range(3)]


def _interp_axis(x: torch.Tensor, axis: int, coords: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``x`` along ``axis`` at fractional ``coords`` (1D); invalid → 0 weight."""
    n = x.shape[axis]
    c = coords.clamp(0, n - 1)
    i0 = torch.floor(c).long().clamp(max=max(n - 2, 0))
    w = (c - i0).to(x.dtype)
    i1 = (i0 + 1).clamp(max=n - 1)
    shape = [1] * x.ndim
    shape[axis] = -1
    w = w.view(shape)
    a = x.index_select(axis, i0)
    b = x.index_select(axis, i1)
    out = torch.lerp(a, b, w)
    if not bool(valid.all()):
        out = out * valid.to(x.dtype).view(shape)
    return out


def resample_affine(
    src: torch.Tensor,
    m: np.ndarray,
    t: np.ndarray,
    out_shape: tuple[int, int, int],
    fill: float = 0.0,
) -> torch.Tensor:
    """Resample ``src`` onto an output grid: ``out[p] = src[m @ p + t]`` (trilinear).

    Args:
        src: source voxels, shape ``(I, J, K)`` (float tensor).
        m: ``(3, 3)`` matrix from output index to source index.
        t: ``(3,)`` source index of output voxel ``(0, 0, 0)``.
        out_shape: output shape ``(P, Q, R)``.
        fill: value for output voxels whose source position lies outside ``src``.

    Returns:
        Tensor of shape ``out_shape`` and the dtype of ``src``.
    """
    m = np.asarray(m, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    src_shape = np.array(src.shape)
    perm = axis_permutation(m)
    if perm is not None:
        # Source axis a follows output axis perm[a]: interpolate src along a at the coordinates
        # of output axis perm[a], then reorder the axes to the output order.
        x = src
        inside = []
        for a in range(3):
            b = perm[a]
            coords = t[a] + m[a, b] * np.arange(out_shape[b])
            valid = (coords >= -1e-6) & (coords <= src_shape[a] - 1 + 1e-6)
            inside.append(valid)
            x = _interp_axis(x, a, torch.from_numpy(coords).to(src.dtype), torch.from_numpy(valid))
        # x is indexed by (out axis perm[0], perm[1], perm[2]); bring to (0, 1, 2).
        order = [perm.index(b) for b in range(3)]
        out = x.permute(*order).contiguous()
        if fill != 0.0:
            v = [torch.from_numpy(inside[perm.index(b)]) for b in range(3)]
            mask = v[0][:, None, None] & v[1][None, :, None] & v[2][None, None, :]
            out = torch.where(mask, out, torch.as_tensor(fill, dtype=out.dtype))
        return out
    return _resample_grid_sample(src, m, t, out_shape, fill)


def _resample_grid_sample(
    src: torch.Tensor, m: np.ndarray, t: np.ndarray, out_shape: tuple[int, int, int], fill: float
) -> torch.Tensor:
    """General (oblique) case through ``affine_grid`` + ``grid_sample`` (normalised coordinates)."""
    dtype = src.dtype if src.dtype in (torch.float32, torch.float64) else torch.float32
    d_out = np.diag([2.0 / max(n - 1, 1) for n in out_shape])
    d_src = np.diag([2.0 / max(n - 1, 1) for n in src.shape])
    a = d_src @ m @ np.linalg.inv(d_out)
    b = d_src @ (m @ np.linalg.inv(d_out) @ np.ones(3) + t) - 1.0
    rev = np.eye(3)[::-1]  # grid_sample's (x, y, z) are the last, middle and first tensor axes
    theta = np.concatenate([rev @ a @ rev, (rev @ b)[:, None]], axis=1)
    grid = F.affine_grid(torch.from_numpy(theta).to(dtype)[None], [1, 1, *out_shape], align_corners=True)
    shifted = src.to(dtype)[None, None] - fill
    out = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return (out[0, 0] + fill).to(src.dtype)


def inside_mask(
    m: np.ndarray, t: np.ndarray, out_shape: tuple[int, int, int], src_shape: tuple[int, int, int]
) -> torch.Tensor:
    """Boolean tensor of ``out_shape``: True where ``m @ p + t`` lies inside a grid of ``src_shape``."""
    m = np.asarray(m, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    lo, hi = -0.5, np.asarray(src_shape, dtype=np.float64) - 0.5
    perm = axis_permutation(m)
    if perm is not None:
        per_out: list[np.ndarray] = [np.ones(n, dtype=bool) for n in out_shape]
        for a in range(3):
            b = perm[a]
            c = t[a] + m[a, b] * np.arange(out_shape[b])
            per_out[b] &= (c >= lo) & (c <= hi[a])
        mask = per_out[0][:, None, None] & per_out[1][None, :, None] & per_out[2][None, None, :]
        return torch.from_numpy(np.ascontiguousarray(mask))
    p = np.stack(np.meshgrid(*[np.arange(n) for n in out_shape], indexing="ij"), axis=-1)
    c = p @ m.T + t
    return torch.from_numpy(np.all((c >= lo) & (c <= hi), axis=-1))
