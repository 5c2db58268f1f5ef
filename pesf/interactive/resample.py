"""Trilinear resampling between two voxel grids related by an affine map.

``out[p] = src[M @ p + t]`` for every output index ``p``, with trilinear interpolation and a fill value
outside ``src``. With ``border=0.5`` a position up to half a voxel beyond the outermost voxel centres reads
the edge voxel, so every position within the grid's extent (``-0.5 <= index <= n - 0.5``, the region
:func:`inside_mask` marks) reads the image, as ITK's linear interpolator does; a scan of a few slices then
fills as many region layers as its thickness covers. ``border`` may also be given per source axis, so that
a few-slice scan is read on beyond its edge slices along its slice axis alone (extruded). When ``M`` maps
each output axis onto a single source axis (the usual case: both grids are aligned with the patient axes,
whatever their flips and permutations), the interpolation is done one axis at a time, which costs a few
passes over the output instead of building a full sampling grid.
Otherwise :func:`torch.nn.functional.grid_sample` handles any oblique direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["resample_affine", "axis_permutation", "inside_mask", "scan_border"]


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


def scan_border(extrude: int | None = None) -> np.ndarray:
    """The ``border`` with which a region reads a scan: the edge voxel within half a voxel of the scan's
    extent, and along the source axis ``extrude`` (if given) the edge slices on beyond it."""
    border = np.full(3, 0.5)
    if extrude is not None:
        border[extrude] = np.inf
    return border


def _per_axis(border: float | Sequence[float]) -> np.ndarray:
    """``border`` as one value per source axis."""
    out = np.broadcast_to(np.asarray(border, dtype=np.float64), (3,)).copy()
    if np.any(out < 0):
        raise ValueError(f"border must not be negative, got {border!r}")
    return out


def _interp_matrix(n_src: int, coords: np.ndarray, valid: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Dense ``(len(coords), n_src)`` linear-interpolation matrix; rows where ``valid`` is False are 0."""
    c = np.clip(coords, 0, n_src - 1)
    i0 = np.clip(np.floor(c).astype(np.int64), 0, max(n_src - 2, 0))
    w = c - i0
    rows = np.arange(len(coords))
    mat = np.zeros((len(coords), n_src), dtype=np.float64)
    mat[rows, i0] += 1.0 - w
    mat[rows, np.minimum(i0 + 1, n_src - 1)] += w
    mat[~valid] = 0.0
    return torch.from_numpy(mat).to(dtype)


def resample_affine(
    src: torch.Tensor,
    m: np.ndarray,
    t: np.ndarray,
    out_shape: tuple[int, int, int],
    fill: float = 0.0,
    border: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Resample ``src`` onto an output grid: ``out[p] = src[m @ p + t]`` (trilinear).

    Args:
        src: source voxels, shape ``(I, J, K)`` (float tensor).
        m: ``(3, 3)`` matrix from output index to source index.
        t: ``(3,)`` source index of output voxel ``(0, 0, 0)``.
        out_shape: output shape ``(P, Q, R)``.
        fill: value for output voxels whose source position lies outside ``src``.
        border: source positions up to this many voxels beyond the outermost voxel centres read the edge
            voxel instead of ``fill`` (0 or 0.5; or one value per source axis, e.g. a large one along a
            few-slice scan's slice axis to extrude it).

    Returns:
        Tensor of shape ``out_shape`` and the dtype of ``src``.
    """
    m = np.asarray(m, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    src_shape = np.array(src.shape)
    perm = axis_permutation(m)
    if perm is not None:
        # Source axis a follows output axis perm[a]: one small interpolation matrix per axis, applied
        # as matrix products (BLAS), then the axes are reordered to the output order. Interpolating
        # (src - fill) and adding fill back makes every outside voxel exactly ``fill``.
        dtype = src.dtype if src.is_floating_point() else torch.float32
        o = [out_shape[perm[a]] for a in range(3)]  # output length along each source axis
        coords = [t[a] + m[a, perm[a]] * np.arange(o[a]) for a in range(3)]
        reach = _per_axis(border) + 1e-6
        valid = [(c >= -r) & (c <= n - 1 + r) for c, n, r in zip(coords, src_shape, reach, strict=True)]
        if not all(v.any() for v in valid):
            return torch.full(out_shape, fill, dtype=dtype)
        # only the source voxels that some output voxel reads
        lo = [
            int(np.clip(np.floor(c[v].min()), 0, n - 1))
            for c, v, n in zip(coords, valid, src_shape, strict=True)
        ]
        hi = [
            int(np.clip(np.floor(c[v].max()) + 2, 1, n))
            for c, v, n in zip(coords, valid, src_shape, strict=True)
        ]
        n = [b - a for a, b in zip(lo, hi, strict=True)]
        if np.prod(n, dtype=np.float64) > np.prod(out_shape, dtype=np.float64):
            # downsampling a large source: gathering 8 neighbours per output voxel is cheaper
            return _resample_grid_sample(src, m, t, out_shape, fill, border)
        mats = [_interp_matrix(n[a], coords[a] - lo[a], valid[a], dtype) for a in range(3)]
        x = src[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].to(dtype)
        x = x - fill if fill != 0.0 else x.contiguous()
        x = torch.mm(mats[0], x.reshape(n[0], -1)).reshape(o[0], n[1], n[2])
        x = torch.matmul(mats[1], x)  # (o0, o1, n2)
        x = torch.addmm(torch.tensor([fill], dtype=dtype), x.reshape(-1, n[2]), mats[2].T)
        x = x.reshape(o[0], o[1], o[2])
        order = [perm.index(b) for b in range(3)]
        return x if order == [0, 1, 2] else x.permute(*order).contiguous()
    return _resample_grid_sample(src, m, t, out_shape, fill, border)


def _resample_grid_sample(
    src: torch.Tensor,
    m: np.ndarray,
    t: np.ndarray,
    out_shape: tuple[int, int, int],
    fill: float,
    border: float | Sequence[float] = 0.0,
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
    shifted = src.to(dtype)[None, None]
    if fill != 0.0:
        shifted = shifted - fill
    if np.any(_per_axis(border) > 0):  # edge voxels within the border, then nothing beyond it
        out = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]
        out = out * inside_mask(m, t, out_shape, tuple(src.shape), border=border).to(out.dtype)
    else:
        out = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]
    return (out + fill if fill != 0.0 else out).to(src.dtype)


def inside_mask(
    m: np.ndarray,
    t: np.ndarray,
    out_shape: tuple[int, int, int],
    src_shape: tuple[int, int, int],
    border: float | Sequence[float] = 0.5,
) -> torch.Tensor:
    """Boolean tensor of ``out_shape``: True where ``m @ p + t`` lies inside a grid of ``src_shape``.

    Inside is ``-border <= index <= n - 1 + border`` on every axis (by default the grid's extent; ``border``
    may be given per source axis).
    """
    m = np.asarray(m, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    width = _per_axis(border)
    lo, hi = -width - 1e-6, np.asarray(src_shape, dtype=np.float64) - 1.0 + width + 1e-6
    perm = axis_permutation(m)
    if perm is not None:
        per_out: list[np.ndarray] = [np.ones(n, dtype=bool) for n in out_shape]
        for a in range(3):
            b = perm[a]
            c = t[a] + m[a, b] * np.arange(out_shape[b])
            per_out[b] &= (c >= lo[a]) & (c <= hi[a])
        mask = per_out[0][:, None, None] & per_out[1][None, :, None] & per_out[2][None, None, :]
        return torch.from_numpy(np.ascontiguousarray(mask))
    p = np.stack(np.meshgrid(*[np.arange(n) for n in out_shape], indexing="ij"), axis=-1)
    c = p @ m.T + t
    return torch.from_numpy(np.all((c >= lo) & (c <= hi), axis=-1))
