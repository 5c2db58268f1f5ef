"""An interactive segmentation session on one volume.

Clicks accumulate per organ. Each click selects a 128^3 region at the model's spacing centred on it (or one
of the organ's regions that holds it, or a cached region centred within a few voxels of it), runs the image
encoder once per region (cached), then only the prompt encoder and mask decoder with all of the organ's
clicks in that region and its previous mask as the mask prompt. The decoder also runs, in the same batch,
with a few randomly perturbed copies of the clicks: their agreement with the main mask is the voxel
confidence map. Organs that reach a region's border grow into overlapping neighbour regions, each centred on
a seed point deep in the mask near that border and prompted with it; a grown region whose mask disagrees
with its parent's is dropped. The region logits are pasted back onto the input grid, resampling only the
bounding box of the predicted organ. From an organ's first click on, the mask is refined by a geodesic
grow from seeds that the model's mask, its logits and the clicks provide (:mod:`pesf.interactive.refine`):
the image decides where the model is unsure, and a corrective click always changes the mask where the user
pointed; where the organ grown from its clicks alone is larger and more sharply bounded by the image, that
grow is shown instead. On a scan of a few slices, the mask of an organ's first click is read with an offset
added to the model's logits (``SessionConfig.thin_scan_offset``), since a model trained on whole scans
answers it there with logits that sit low.

Typical use::

    session = InteractiveSession(pesf.load_model("default"), read_volume("ct.nii.gz"))
    result = session.add_click("liver", ijk=(60, 40, 12), positive=True)
    labelmap = result.full_mask()
"""

from __future__ import annotations

import copy
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from pesf.errors import PesfError
from pesf.interactive.refine import REFINED_LOGIT, RefineConfig, grow_instead, mark_turned, refine_mask
from pesf.interactive.resample import resample_affine
from pesf.interactive.result import OrganResult
from pesf.interactive.roi import Region, make_region
from pesf.io.volume import Volume
from pesf.models.variants import guess_modality, resolve_variant

__all__ = ["InteractiveSession", "SessionConfig"]

logger = logging.getLogger(__name__)

_BACKGROUND_LOGIT = -20.0
_GROW_MIN_DEPTH = 2.0  # voxels from the mask's border for a seed of growth
_GROW_MIN_AGREEMENT = 0.5  # Dice of a grown region's mask with its parent's where they overlap


@dataclass
class SessionConfig:
    """Settings of an interactive session.

    Attributes:
        roi_size: voxels per side of a region (128 for SAM-Med3D).
        roi_spacing: model spacing in mm (1.5 for SAM-Med3D).
        confidence_runs: decoder runs with perturbed clicks for the voxel confidence map (0 disables).
        perturb_sigma: standard deviation (region voxels) of the click perturbation.
        grow: let organs that touch a region's border grow into overlapping regions.
        max_regions_per_organ: cap on regions per organ when growing.
        max_cached_regions: encoded regions kept in memory (least recently used are dropped).
        reuse_margin: a click reuses one of its organ's regions if it lies this many voxels inside it.
        share_radius: a click reuses another organ's region only if it lies within this many voxels of the
            region's centre; otherwise it gets a region centred on it, the framing models are trained on (an
            organ framed off-centre by another organ's region is segmented worse).
        refine: refine the model's mask by a geodesic grow from seeds (:mod:`pesf.interactive.refine`), from
            the organ's click ``refine.from_click`` on (the first by default); ``None`` leaves the model's
            mask as it is.
        thin_scan_mm: a scan at most this thick (along its thinnest axis) counts as a few-slice scan.
        thin_scan_offset: added to the model's logits of an organ's first click on a few-slice scan (0
            disables). On such scans a model trained on whole scans answers the first click with logits that
            sit low and stops short of a large organ (three slices of the sample CT through the liver: Dice
            0.21 after one click, 0.85 on the whole scan). The offset shifts the mask's threshold only, and
            only for the decodes of the first click: the model's own logits stay its mask prompt, and later
            clicks are decoded as they are. Chosen on slabs of 3, 5 and 10 slices of the sample CT
            (``Testing/Benchmarks/slab_dev.py``): +1 raised the mean Dice after one click by 0.035, 0.053 and
            0.022 and changed it after three and five clicks by -0.012 to +0.002; +1.5 gained as much after
            one click and lost up to 0.023 after three. Since the refinement's working box holds every voxel
            the model is unsure of, +1 gains 0.006, 0.027 and 0.008 after one click and changes the mean over
            the three slabs by +0.006 after three clicks and -0.002 after five.
        thin_scan_extrude: read a few-slice scan on beyond its edge slices along its thinnest axis (extruded),
            so the model sees the slab as a volume; ``None`` (the default) does so for a model whose metadata
            says it was trained that way (``"thin_scans": "extrude"``; see
            :class:`~pesf.train.augment.AugmentConfig`'s ``extrude_mm``). Only the scan's own slices are
            segmented.
        match_modality: use the variant the model names for the image's modality, or for a few-slice scan of
            it, if it names one (the bundled default model names its MR weights, ``default-mr``, and its
            weights for few-slice CT scans, ``default-thin``; see :mod:`pesf.models.variants`). ``False``
            keeps the model as given on every image.
        seed: seed of the click perturbation.
    """

    roi_size: int = 128
    roi_spacing: float = 1.5
    confidence_runs: int = 4
    perturb_sigma: float = 2.0
    grow: bool = True
    max_regions_per_organ: int = 4
    max_cached_regions: int = 12
    reuse_margin: int = 16
    share_radius: float = 4.0
    refine: RefineConfig | None = field(default_factory=RefineConfig)
    thin_scan_mm: float = 30.0
    thin_scan_offset: float = 1.0
    thin_scan_extrude: bool | None = None
    match_modality: bool = True
    seed: int = 0


@dataclass
class _Click:
    lps: np.ndarray
    positive: bool


@dataclass
class _OrganState:
    clicks: list[_Click] = field(default_factory=list)
    regions: list[int] = field(default_factory=list)  # region keys, first = where the organ started
    auto_points: dict[int, list[_Click]] = field(default_factory=dict)
    low_res: dict[int, torch.Tensor] = field(default_factory=dict)  # (1, 1, s/4, s/4, s/4) logits
    logits: dict[int, torch.Tensor] = field(default_factory=dict)  # (s, s, s) logits
    agreement: dict[int, torch.Tensor] = field(default_factory=dict)  # (s/4, s/4, s/4) in 0..1
    scores: dict[int, float] = field(default_factory=dict)
    offsets: dict[int, float] = field(default_factory=dict)  # added to a decode's logits for its mask
    pending: dict[int, tuple] = field(default_factory=dict)  # decodes whose confidence is not computed yet
    result: OrganResult | None = None
    grown: bool = False  # the first click's refinement took the clicks' own grow
    history: list[_OrganState] = field(default_factory=list)

    def snapshot(self) -> _OrganState:
        snap = copy.copy(self)
        snap.clicks = list(self.clicks)
        snap.regions = list(self.regions)
        snap.auto_points = {k: list(v) for k, v in self.auto_points.items()}
        for name in ("low_res", "logits", "agreement", "scores", "offsets", "pending"):
            setattr(snap, name, dict(getattr(self, name)))
        snap.history = []
        return snap


class InteractiveSession:
    """Point-prompted segmentation of several organs in one volume, with cached region embeddings.

    Args:
        model: a SAM-Med3D-compatible module with ``image_encoder``, ``prompt_encoder`` and
            ``mask_decoder`` (see :func:`pesf.load_model`); an optional ``confidence_module`` taking
            ``(image_embedding (B, C, 8, 8, 8), low_res_logits (B, 1, 32, 32, 32))`` and returning the
            predicted Dice ``(B,)`` gives the organ score. The session's ``model`` is the variant this one
            names for the image's modality, if any (``config.match_modality``), and ``variant`` its name.
        image: the input volume.
        config: session settings. Its ``refine`` settings, with ``smooth_blocks`` set to ``smooth_blocks_mr``
            where the image is an MR (:func:`~pesf.models.variants.guess_modality`), are the session's
            ``refine_config``.
        device: torch device; default the model's.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        image: Volume,
        config: SessionConfig | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.config = config or SessionConfig()
        self.variant: str | None = None  # the name of the model's variant the session uses, if any
        extent = np.array(image.shape) * image.spacing
        self._few_slices = float(np.min(extent)) <= self.config.thin_scan_mm
        modality = guess_modality(image.array) if image.array.size else None
        if self.config.match_modality:
            model, self.variant = resolve_variant(model, image.array, self._few_slices, modality)
        self.model = model.eval()
        self.image = image
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self._image_tensor = torch.from_numpy(np.ascontiguousarray(image.array, dtype=np.float32))
        self._regions: OrderedDict[int, Region] = OrderedDict()
        self._region_origins: dict[int, np.ndarray] = {}
        self._next_key = 0
        self._organs: dict[str, _OrganState] = {}
        self._rng = np.random.default_rng(self.config.seed)
        extrude = self.config.thin_scan_extrude
        if extrude is None:
            extrude = (getattr(self.model, "metadata", None) or {}).get("thin_scans") == "extrude"
        self._extrude = int(np.argmin(extent)) if self._few_slices and extrude else None
        # the refinement's settings for this image: an MR image's grows run on its smoothed intensities
        refine = self.config.refine
        if refine is not None and modality == "MR":
            refine = replace(refine, smooth_blocks=refine.smooth_blocks_mr)
        self.refine_config = refine
        s = self.config.roi_size
        tent = torch.minimum(torch.arange(s) + 1.0, s - torch.arange(s).float()) / (s / 2)
        self._blend_weight = (tent[:, None, None] * tent[None, :, None] * tent[None, None, :]).clamp(1e-3, 1)

    # ------------------------------------------------------------------ public API
    @property
    def organs(self) -> list[str]:
        """Organs that have received clicks, in order of their first click."""
        return list(self._organs)

    def n_clicks(self, organ: str) -> int:
        state = self._organs.get(organ)
        return len(state.clicks) if state else 0

    def result(self, organ: str) -> OrganResult:
        """The current result of ``organ`` (empty if it has no clicks)."""
        state = self._organs.get(organ)
        if state is None or state.result is None:
            return OrganResult.empty(organ, self.image.shape)
        return state.result

    def add_click(
        self, organ: str, ijk: np.ndarray | tuple[float, float, float], positive: bool = True
    ) -> OrganResult:
        """Add a click at voxel index ``ijk`` (may be fractional) of the input image and re-segment.

        Raises:
            PesfError: if the point lies outside the image.
        """
        ijk = np.asarray(ijk, dtype=np.float64).reshape(3)
        shape = np.array(self.image.shape)
        if np.any(ijk < -0.5) or np.any(ijk > shape - 0.5):
            raise PesfError(
                f"click {ijk.round(2).tolist()} for '{organ}' lies outside the image (voxel indices 0..{(shape - 1).tolist()})"
            )
        return self.add_click_lps(organ, self.image.index_to_lps(ijk), positive)

    def add_click_lps(self, organ: str, lps: np.ndarray, positive: bool = True) -> OrganResult:
        """Add a click at an LPS point (mm) and re-segment ``organ``."""
        t0 = time.perf_counter()
        timings = {"preprocess_s": 0.0, "encode_s": 0.0, "decode_s": 0.0, "paste_s": 0.0}
        state = self._organs.setdefault(organ, _OrganState())
        snapshot = state.snapshot()
        try:
            state.clicks.append(_Click(np.asarray(lps, dtype=np.float64), bool(positive)))
            key = self._region_for(state, state.clicks[-1].lps, timings)
            if key not in state.regions:
                state.regions.append(key)
            self._decode(state, key, timings)
            if self.config.grow:
                self._grow(state, key, timings)
            t1 = time.perf_counter()
            result = self._compose(organ, state)
            t2 = time.perf_counter()
            timings["paste_s"] = t2 - t1
            if self.refine_config is not None and len(state.clicks) >= self.refine_config.from_click:
                result = self._refine(result, state)
                timings["refine_s"] = time.perf_counter() - t2
        except BaseException:
            self._restore(organ, snapshot)
            raise
        timings["total_s"] = time.perf_counter() - t0
        result.timings = timings
        state.result = result
        state.history.append(snapshot)
        return result

    def undo(self, organ: str) -> OrganResult:
        """Remove the last click of ``organ`` and return the result as it was before it."""
        state = self._organs.get(organ)
        if state is None or not state.history:
            raise PesfError(f"nothing to undo for '{organ}'")
        previous = state.history.pop()
        previous.history = state.history
        self._organs[organ] = previous
        return self.result(organ)

    def reset(self, organ: str) -> None:
        """Forget every click of ``organ``."""
        self._organs.pop(organ, None)

    def label_map(self, values: dict[str, int]) -> np.ndarray:
        """A label map of the input grid: ``values[organ]`` where that organ's mask is set.

        Where organs overlap, the one with the higher probability wins.
        """
        dtype = np.uint8 if max(values.values(), default=0) <= 255 else np.uint16
        out = np.zeros(self.image.shape, dtype=dtype)
        best = np.zeros(self.image.shape, dtype=np.float32)  # best logit so far (0 = probability 0.5)
        for organ, value in values.items():
            res = self.result(organ)
            if res.logits.size == 0:
                continue
            sub_best = best[res.bbox]
            take = res.mask & (res.logits > sub_best)
            out[res.bbox][take] = value
            sub_best[take] = res.logits[take]
        return out

    # ------------------------------------------------------------------ regions
    def _restore(self, organ: str, snapshot: _OrganState) -> None:
        snapshot.history = self._organs[organ].history
        self._organs[organ] = snapshot
        if not snapshot.clicks:
            del self._organs[organ]

    def _region_for(self, state: _OrganState, lps: np.ndarray, timings: dict[str, float]) -> int:
        """The key of a region for a click at ``lps``: one of the organ's own that holds it, else a cached
        region centred near it, else a new region centred on it."""
        for key in state.regions:
            if self._region_at(key).contains(lps, self.config.reuse_margin):
                return key
        if len(state.clicks) > 1:
            # a corrective click beyond the organ's regions: a region that also holds the organ's first click
            # where it can, so the model sees the organ with both (the click at least reuse_margin inside)
            size = self.config.roi_size
            reach = (size - 1 - size // 2 - self.config.reuse_margin) * self.config.roi_spacing
            lps = lps + np.clip(state.clicks[0].lps - lps, -reach, reach)
        return self._centred_region(lps, timings)

    def _centred_region(self, lps: np.ndarray, timings: dict[str, float]) -> int:
        """A cached region centred within ``share_radius`` voxels of ``lps``, else a new one centred on it."""
        middle = (self.config.roi_size // 2,) * 3
        for key, region in reversed(self._regions.items()):
            if np.linalg.norm(region.lps_to_index(lps) - middle) <= self.config.share_radius:
                return key
        return self._new_region(lps, timings)

    def _new_region(self, center_lps: np.ndarray, timings: dict[str, float]) -> int:
        key = self._next_key
        self._next_key += 1
        t0 = time.perf_counter()
        region = make_region(
            self.image,
            self._image_tensor,
            center_lps,
            self.config.roi_size,
            self.config.roi_spacing,
            self._extrude,
        )
        region.key = key
        timings["preprocess_s"] += time.perf_counter() - t0
        self._encode(region, timings)
        self._regions[key] = region
        self._region_origins[key] = region.origin
        self._evict()
        return key

    def _region_at(self, key: int) -> Region:
        """A cached region, re-encoded if it was evicted."""
        region = self._regions.get(key)
        if region is None:
            center = self._region_origins[key] + np.diag([-1.0, -1.0, 1.0]) @ np.full(
                3, self.config.roi_spacing * (self.config.roi_size // 2)
            )
            timings = {"preprocess_s": 0.0, "encode_s": 0.0}
            region = make_region(
                self.image,
                self._image_tensor,
                center,
                self.config.roi_size,
                self.config.roi_spacing,
                self._extrude,
            )
            region.key = key
            self._encode(region, timings)
            self._regions[key] = region
            self._evict()
        self._regions.move_to_end(key)
        return region

    def _evict(self) -> None:
        while len(self._regions) > self.config.max_cached_regions:
            self._regions.popitem(last=False)

    @torch.inference_mode()
    def _encode(self, region: Region, timings: dict[str, float]) -> None:
        t0 = time.perf_counter()
        region.embedding = self.model.image_encoder(region.image.to(self.device))
        timings["encode_s"] += time.perf_counter() - t0

    # ------------------------------------------------------------------ decoding
    def _points_in(self, state: _OrganState, region: Region) -> tuple[np.ndarray, np.ndarray]:
        clicks = [c for c in state.clicks if region.contains(c.lps)]
        clicks += state.auto_points.get(region.key, [])
        coords = np.array([region.lps_to_index(c.lps) for c in clicks], dtype=np.float32).reshape(-1, 3)
        labels = np.array([1 if c.positive else 0 for c in clicks], dtype=np.int64)
        return coords, labels

    def _run_decoder(
        self, region: Region, coords: np.ndarray, labels: np.ndarray, prev: torch.Tensor
    ) -> torch.Tensor:
        """Prompt encoder + mask decoder for a batch of click sets ``coords (B, N, 3)``, ``labels (N,)``.

        Returns:
            Low-resolution logits ``(B, 1, s/4, s/4, s/4)`` on the CPU.
        """
        runs = coords.shape[0]
        pe = self.model.prompt_encoder
        sparse, dense = pe(
            points=(
                torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float32)).to(self.device),
                torch.from_numpy(np.repeat(labels[None], runs, axis=0)).to(self.device),
            ),
            boxes=None,
            masks=prev.to(self.device).expand(runs, -1, -1, -1, -1),
        )
        low_res, _ = self.model.mask_decoder(
            image_embeddings=region.embedding.expand(runs, -1, -1, -1, -1),
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return low_res[:, :1].float().cpu()

    @torch.inference_mode()
    def _decode(self, state: _OrganState, key: int, timings: dict[str, float]) -> None:
        """Decode the organ in one region with all its clicks there and its previous mask."""
        region = self._region_at(key)
        t0 = time.perf_counter()
        coords, labels = self._points_in(state, region)
        prev = state.low_res.get(key)
        if prev is None:
            s4 = region.size // 4
            prev = torch.zeros(1, 1, s4, s4, s4)
        low_res = self._run_decoder(region, coords[None], labels, prev)
        up = F.interpolate(low_res, size=(region.size,) * 3, mode="trilinear", align_corners=False)[0, 0]
        offset = self.config.thin_scan_offset if self._few_slices and len(state.clicks) == 1 else 0.0
        state.low_res[key] = low_res  # the model's own logits: the next decode's mask prompt
        state.offsets[key] = offset
        state.logits[key] = torch.where(region.inside, up + offset, torch.tensor(_BACKGROUND_LOGIT))
        # the confidence of this decode is computed when first asked for (see _confidence)
        state.pending[key] = (coords, labels, prev, low_res, offset)
        state.agreement.pop(key, None)
        state.scores.pop(key, None)
        timings["decode_s"] += time.perf_counter() - t0

    @torch.inference_mode()
    def _confidence(self, key: int, pending: tuple) -> tuple[torch.Tensor, float]:
        """Voxel agreement (decoder resolution) and organ score for one decode of one region.

        The decoder runs again, in one batch, with ``confidence_runs`` randomly perturbed copies of the
        clicks (cheap: the image embedding is cached). The agreement of their masks with the main mask
        is the voxel confidence; their mean overlap (IoU) with it is the score, unless the model has a
        confidence module, whose predicted Dice is used instead.
        """
        coords, labels, prev, low_res, offset = pending
        low_res = low_res + offset  # the logits the decode's mask is read from
        region = self._region_at(key)
        runs = max(0, self.config.confidence_runs)
        main = low_res[0, 0] > 0
        if runs and len(coords):
            batch = np.repeat(coords[None], runs, axis=0)
            batch = batch + self._rng.normal(0.0, self.config.perturb_sigma, size=batch.shape)
            batch = np.clip(batch, 0, region.size - 1)
            others = self._run_decoder(region, batch, labels, prev)[:, 0] + offset > 0
            agree = (others == main[None]).float().mean(dim=0)
            inter = (others & main[None]).flatten(1).sum(1).float()
            union = (others | main[None]).flatten(1).sum(1).float()
            score = float(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).mean())
        else:
            agree = torch.ones(main.shape)
            score = 1.0
        conf_module = getattr(self.model, "confidence_module", None)
        if conf_module is not None:
            score = float(conf_module(region.embedding, low_res).reshape(-1)[0])
        return agree, score

    def _grow(self, state: _OrganState, start: int, timings: dict[str, float]) -> None:
        """Extend the organ into neighbour regions where its mask reaches a region's border."""
        queue = [start]
        while queue and len(state.regions) < self.config.max_regions_per_organ:
            key = queue.pop(0)
            region = self._region_at(key)
            mask = (state.logits[key] > 0).numpy()
            if not mask.any():
                continue
            size = region.size
            for axis in range(3):
                for side in (0, 1):
                    if len(state.regions) >= self.config.max_regions_per_organ:
                        return
                    face = [slice(None)] * 3
                    face[axis] = slice(0, 2) if side == 0 else slice(size - 2, size)
                    if not mask[tuple(face)].any():
                        continue
                    seed_point = self._interior_point(mask, axis, side, region)
                    if seed_point is None:
                        continue
                    if any(self._region_at(k).contains(seed_point, size // 4) for k in state.regions):
                        continue
                    # the new region is centred on its seed, as on a click: the framing models are trained on
                    new_key = self._centred_region(seed_point, timings)
                    if new_key in state.regions:
                        continue
                    state.regions.append(new_key)
                    state.auto_points[new_key] = [_Click(seed_point, True)]
                    self._decode(state, new_key, timings)
                    if self._agrees(state, key, new_key):
                        queue.append(new_key)
                    else:  # it segments something else than the organ it grew from: drop it
                        state.regions.remove(new_key)
                        for name in ("auto_points", "low_res", "logits", "agreement", "scores", "pending"):
                            getattr(state, name).pop(new_key, None)

    def _agrees(self, state: _OrganState, key: int, other: int) -> bool:
        """Whether the organ's masks of two regions agree where the regions overlap (Dice >= 0.5).

        Regions share orientation and spacing, so the overlap is an index shift (rounded to whole voxels).
        """
        a, b = self._region_at(key), self._region_at(other)
        size = a.size
        shift = np.round(a.lps_to_index(b.index_to_lps(np.zeros(3)))).astype(int)  # b's voxel 0 in a
        lo, hi = np.maximum(shift, 0), np.minimum(shift + size, size)
        if np.any(hi <= lo):
            return True
        in_a = tuple(slice(int(p), int(q)) for p, q in zip(lo, hi, strict=True))
        in_b = tuple(slice(int(p - o), int(q - o)) for p, q, o in zip(lo, hi, shift, strict=True))
        mask_a, mask_b = state.logits[key][in_a] > 0, state.logits[other][in_b] > 0
        total = int(mask_a.sum()) + int(mask_b.sum())
        return total == 0 or 2.0 * int((mask_a & mask_b).sum()) / total >= _GROW_MIN_AGREEMENT

    @staticmethod
    def _interior_point(mask: np.ndarray, axis: int, side: int, region: Region) -> np.ndarray | None:
        """LPS point of the most interior mask voxel in the quarter of the region nearest the face, or
        ``None`` when the mask there is thinner than :data:`_GROW_MIN_DEPTH` voxels (a sliver, not an organ
        that goes on)."""
        band = [slice(None)] * 3
        size = mask.shape[axis]
        start = size - size // 4 if side == 1 else 0
        band[axis] = slice(start, start + size // 4)
        sub = mask[tuple(band)]
        if not sub.any():
            return None
        dist = ndimage.distance_transform_edt(sub)
        best = int(np.argmax(dist))
        if dist.flat[best] < _GROW_MIN_DEPTH:
            return None
        idx = np.array(np.unravel_index(best, sub.shape), dtype=np.float64)
        idx[axis] += start
        return region.index_to_lps(idx)

    # ------------------------------------------------------------------ paste-back
    def _compose(self, organ: str, state: _OrganState) -> OrganResult:
        """Paste the organ's region logits back onto the input grid (bounding box only)."""
        shape = np.array(self.image.shape)
        boxes = {}
        for key in state.regions:
            logits = state.logits[key]
            near = logits > -4.0  # probability above ~2%: where the organ may lie
            if not bool(near.any()):
                continue
            lo_hi = []
            for axis in range(3):
                other = tuple(a for a in range(3) if a != axis)
                idx = torch.nonzero(near.any(dim=other)).flatten()
                lo_hi.append((int(idx[0]) - 1, int(idx[-1]) + 1))
            corners = np.array(
                [[lo_hi[0][a], lo_hi[1][b], lo_hi[2][c]] for a in (0, 1) for b in (0, 1) for c in (0, 1)],
                dtype=np.float64,
            )
            region = self._region_at(key)
            img_idx = self.image.lps_to_index(region.index_to_lps(corners))
            lo = np.clip(np.floor(img_idx.min(axis=0)).astype(int), 0, shape)
            hi = np.clip(np.ceil(img_idx.max(axis=0)).astype(int) + 1, 0, shape)
            if np.all(hi > lo):
                boxes[key] = (lo, hi)
        if not boxes:
            res = OrganResult.empty(organ, self.image.shape)
            res.n_clicks, res.n_regions = len(state.clicks), len(state.regions)
            return res
        lo = np.min([b[0] for b in boxes.values()], axis=0)
        hi = np.max([b[1] for b in boxes.values()], axis=0)
        crop = tuple(int(n) for n in hi - lo)
        bbox = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        keys = list(boxes)
        logits = self._blend(keys, state.logits, lo, crop, _BACKGROUND_LOGIT)
        has_module = getattr(self.model, "confidence_module", None) is not None
        ensure = self._confidence_closure(state)

        def confidence_map() -> np.ndarray:
            agreement, _ = ensure()
            return self._blend(keys, agreement, lo, crop, 1.0).numpy()

        return OrganResult(
            name=organ,
            image_shape=self.image.shape,
            bbox=bbox,  # type: ignore[arg-type]
            logits=logits.numpy(),
            confidence_map_fn=confidence_map,
            confidence_fn=lambda: float(np.mean(list(ensure()[1].values()))),
            confidence_source="confidence-module" if has_module else "perturbation",
            n_clicks=len(state.clicks),
            n_regions=len(state.regions),
        )

    def _refine(self, result: OrganResult, state: _OrganState) -> OrganResult:
        """The result with its mask refined by the organ's clicks (see :mod:`pesf.interactive.refine`), or
        replaced by the grow from the clicks alone (:func:`~pesf.interactive.refine.grow_instead`) at the
        organ's first click, and at its later clicks once its first click took it.

        Voxels the refinement turned get logit +-2 (probability 0.88 / 0.12), and their voxel confidence
        becomes the decoder runs' agreement with the turned label (1 minus their agreement with the model's).
        With a confidence module, the organ score is its predicted Dice of the refined mask: the model's
        low-resolution logits of each region, set to +-2 where the refinement turned the mask, scored with
        the region's embedding (mean over the organ's regions).
        """
        clicks = [(self.image.lps_to_index(c.lps), c.positive) for c in state.clicks]
        refined = refine_mask(
            self.image.array,
            result.mask,
            result.bbox,
            self.image.spacing,
            clicks,
            self.refine_config,
            logits=result.logits if result.logits.size else None,
        )
        if refined is None:
            return result
        cfg = self.refine_config
        if cfg.candidate_contrast > 0:
            later = cfg.candidate_later
            first = len(clicks) == 1
            if first or later == "all" or (state.grown and later in ("check", "always")):
                force = not first and later == "always"
                grown = grow_instead(self.image.array, self.image.spacing, clicks, *refined, cfg, force=force)
                if first:
                    state.grown = grown is not None
                refined = grown or refined
        box, mask = refined
        if result.logits.size:  # the union of the model's crop and the working box
            lo = np.minimum([b.start for b in result.bbox], [b.start for b in box])
            hi = np.maximum([b.stop for b in result.bbox], [b.stop for b in box])
        else:
            lo, hi = np.array([b.start for b in box]), np.array([b.stop for b in box])
        bbox = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))

        def inner(outer: tuple[slice, ...]) -> tuple[slice, ...]:  # ``outer`` within ``bbox``
            return tuple(slice(o.start - int(a), o.stop - int(a)) for o, a in zip(outer, lo, strict=True))

        logits = np.full(tuple(int(v) for v in hi - lo), _BACKGROUND_LOGIT, dtype=np.float32)
        if result.logits.size:
            logits[inner(result.bbox)] = result.logits
        turned = mask != (logits[inner(box)] > 0)
        logits[inner(box)][turned] = np.where(mask[turned], REFINED_LOGIT, -REFINED_LOGIT)
        old_map, old_bbox = result.confidence_map_fn, result.bbox

        def confidence_map() -> np.ndarray:
            out = np.ones(logits.shape, dtype=np.float32)
            if old_map is not None and result.logits.size:
                out[inner(old_bbox)] = old_map()
            sub = out[inner(box)]
            sub[turned] = 1.0 - sub[turned]
            return out

        confidence_fn = result.confidence_fn
        conf_module = getattr(self.model, "confidence_module", None)
        if conf_module is not None and turned.any():
            sign = np.zeros(mask.shape, dtype=np.float32)
            sign[turned] = np.where(mask[turned], 1.0, -1.0)
            lows = {
                k: state.low_res[k] + state.offsets.get(k, 0.0) for k in state.regions if k in state.low_res
            }
            origin = np.array([b.start for b in box], dtype=np.float64)

            def confidence_fn() -> float:
                return self._refined_score(conf_module, lows, torch.from_numpy(sign), origin)

        return OrganResult(
            name=result.name,
            image_shape=result.image_shape,
            bbox=bbox,  # type: ignore[arg-type]
            logits=logits,
            confidence_map_fn=confidence_map,
            confidence_fn=confidence_fn,
            confidence_source=result.confidence_source,
            n_clicks=result.n_clicks,
            n_regions=result.n_regions,
        )

    @torch.inference_mode()
    def _refined_score(
        self,
        conf_module: torch.nn.Module,
        lows: dict[int, torch.Tensor],
        sign: torch.Tensor,
        origin: np.ndarray,
    ) -> float:
        """The confidence module's predicted Dice of a refined mask, mean over the organ's regions.

        ``sign`` (+1 turned on, -1 turned off, 0 kept) is a crop of the input grid starting at ``origin``; it
        is read at the centres of each region's low-resolution voxels (4 region voxels wide).
        """
        scores = []
        for key, low in lows.items():
            region = self._region_at(key)
            m, t = region.image_to_region(self.image)  # input index = m @ region index + t
            s4 = low.shape[-1]
            f = region.size // s4
            turned = resample_affine(
                sign, m * f, t + m @ np.full(3, (f - 1) / 2) - origin, (s4,) * 3, fill=0.0
            )
            logits = mark_turned(low[0, 0].clone(), turned)
            scores.append(float(conf_module(region.embedding, logits[None, None]).reshape(-1)[0]))
        return float(np.mean(scores)) if scores else 0.0

    def _confidence_closure(self, state: _OrganState):
        """A function computing (once) the agreement maps and scores of the organ's current decodes.

        It captures the decodes as they are now, so a result keeps its own confidence after more clicks;
        what it computes is also stored in the organ's state while that still holds the same decodes.
        """
        agreement = {k: state.agreement[k] for k in state.regions if k in state.agreement}
        scores = {k: state.scores[k] for k in state.regions if k in state.scores}
        pending = {k: state.pending[k] for k in state.regions if k in state.pending}

        def ensure() -> tuple[dict[int, torch.Tensor], dict[int, float]]:
            for key in list(pending):
                item = pending.pop(key)
                agreement[key], scores[key] = self._confidence(key, item)
                if state.pending.get(key) is item:
                    state.agreement[key], state.scores[key] = agreement[key], scores[key]
                    del state.pending[key]
            return agreement, scores

        return ensure

    def _blend(
        self,
        keys: list[int],
        maps: dict[int, torch.Tensor],
        lo: np.ndarray,
        crop: tuple[int, int, int],
        fill: float,
    ) -> torch.Tensor:
        """Paste a per-region map (logits or agreement) of several regions onto the crop.

        Overlapping regions are blended with weights that fall off towards each region's border.
        """
        if len(keys) == 1:
            return self._paste(keys[0], maps[keys[0]], lo, crop, fill)
        value_sum = torch.zeros(crop)
        weight_sum = torch.zeros(crop)
        for key in keys:
            region = self._region_at(key)
            m, t = region.region_to_image(self.image)
            w = resample_affine(self._blend_weight, m, t + m @ lo, crop, fill=0.0)
            value_sum += w * self._paste(key, maps[key], lo, crop, fill)
            weight_sum += w
        covered = weight_sum > 0
        return torch.where(covered, value_sum / weight_sum.clamp(min=1e-6), torch.tensor(fill))

    def _paste(
        self, key: int, src: torch.Tensor, lo: np.ndarray, crop: tuple[int, int, int], fill: float
    ) -> torch.Tensor:
        """Resample one region's map onto the crop starting at input index ``lo``."""
        region = self._region_at(key)
        m, t = region.region_to_image(self.image)
        t = t + m @ lo
        if src.shape[0] != region.size:  # low-resolution map: index c covers region voxels 4c..4c+3
            f = region.size / src.shape[0]
            m, t = m / f, (t + 0.5) / f - 0.5
        return resample_affine(src, m, t, crop, fill=fill)
