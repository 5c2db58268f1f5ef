"""Reading and writing model checkpoints, safely.

Two formats are read:

* **SAM-Med3D** (``sam_med3d_turbo.pth`` and kin): a dict whose ``model_state_dict`` holds unprefixed
  ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*`` keys, next to training state (``epoch``,
  ``optimizer_state_dict``, ``args`` as an ``argparse.Namespace``, ...). A bare state dict is accepted too.
  Both load strictly into the ``vit_b_ori`` configuration.
* **PESF** (written by :func:`save_checkpoint`): ``{"format": "pesf-sam3d", "format_version", "config",
  "state_dict", "metadata"}`` plus optional ``confidence_state_dict`` and ``confidence_config`` (the PESF
  confidence module, rebuilt and attached as ``model.confidence_module`` on load) and extra plain entries.

Files are always read with ``torch.load(..., weights_only=True)``: only tensors and plain containers are
rebuilt, never arbitrary objects. The few extra types official checkpoints carry (``argparse.Namespace`` and
numpy scalars/arrays) are allow-listed for that one call.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import PesfError
from ..io.atomic import atomic_path
from ..resources import models_dir
from .confidence import confidence_module_from_state
from .config import CONFIGS, DEFAULT_CONFIG, SamConfig, get_config
from .sam3d import Sam3D, build_model

__all__ = [
    "FORMAT",
    "available_models",
    "load_model",
    "model_info",
    "read_checkpoint",
    "resolve_reference",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

FORMAT = "pesf-sam3d"
FORMAT_VERSION = 1
_RESERVED = {
    "format",
    "format_version",
    "config",
    "state_dict",
    "metadata",
    "confidence_state_dict",
    "confidence_config",
}
_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".tar"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SUBMODULES = ("image_encoder", "prompt_encoder", "mask_decoder")
_UNTRAINED_SEED = 0


def _extra_safe_globals() -> list[Any]:
    """The non-torch types official SAM-Med3D checkpoints may contain, under both numpy module names."""
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 / numpy 1
    allowed: list[Any] = [argparse.Namespace, np.dtype, np.ndarray]
    # numpy >= 1.25 rebuilds dtypes through their classes (numpy.dtypes.Float64DType, ...).
    allowed += [type(np.dtype(t)) for t in ("f8", "f4", "f2", "i8", "i4", "i2", "i1", "u1", "?")]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((core.multiarray.scalar, f"{module}.scalar"))
        allowed.append((core.multiarray._reconstruct, f"{module}._reconstruct"))
    return allowed


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file's top-level dict, weights-only, tensors on the CPU.

    Args:
        path: the file.

    Returns:
        The unpickled dict (a bare state dict is returned as is).

    Raises:
        PesfError: missing, unreadable, truncated or corrupt file; a file holding anything but weights and
            plain data (refused, not executed); a top level that is not a dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise PesfError(f"checkpoint file not found: {path}")
    try:
        with torch.serialization.safe_globals(_extra_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)|but got <class '([^']+)'>", str(exc))
        if found:
            raise PesfError(
                f"refusing to load {path}: it contains a Python object ({found.group(1) or found.group(2)}) that is not plain "
                "weights; only use checkpoints from a source you trust, saved as weights"
            ) from None
        raise PesfError(
            f"{path} is not a readable checkpoint (truncated or corrupt): {_one_line(exc)}"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError) as exc:
        raise PesfError(
            f"{path} is not a readable checkpoint (truncated or corrupt): {_one_line(exc)}"
        ) from None
    if not isinstance(obj, dict):
        raise PesfError(f"{path} is not a model checkpoint: it holds a {type(obj).__name__}, not a dict")
    return obj


def _is_state_dict(obj: Any) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _plain_number(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, (int, float, str, bool)) else None


def _guess_architecture(state: dict[str, Tensor]) -> str:
    """A short description of the model a state dict belongs to."""
    if not any(k.split(".", 1)[0] in _SUBMODULES for k in state):
        first = ", ".join(list(state)[:3])
        return (
            f"not a SAM-style model (no image_encoder/prompt_encoder/mask_decoder keys; first keys: {first})"
        )
    patch = state.get("image_encoder.patch_embed.proj.weight")
    if patch is None:
        return "a SAM-style model with an unfamiliar image encoder"
    if patch.ndim == 4:
        return f"a 2D SAM model (embed {patch.shape[0]}, {patch.shape[-1]}x{patch.shape[-1]} patches)"
    embed, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))}
    pos = state.get("image_encoder.pos_embed")
    image = int(pos.shape[1]) * patch_size if pos is not None and pos.ndim == 5 else None
    iou = state.get("mask_decoder.iou_token.weight")
    prompt = int(iou.shape[1]) if iou is not None else None
    for cfg in CONFIGS.values():
        if (cfg.encoder_embed_dim, cfg.encoder_depth, cfg.image_size, cfg.prompt_embed_dim) == (
            embed,
            len(blocks),
            image,
            prompt,
        ):
            return f"the {cfg.name} configuration"
    size = f"{image}^3 input, " if image else ""
    return f"a 3D ViT model with embed {embed}, depth {len(blocks)}, {size}prompt dim {prompt}"


def _check_fit(model: Sam3D, state: dict[str, Tensor], path: Path) -> None:
    """Raise a one-line :class:`PesfError` unless ``state`` matches ``model`` key for key and shape for shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        example = (wrong or missing or unexpected)[0]
        raise PesfError(
            f"{path} does not fit the {model.config.name} architecture ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} wrong-shaped keys, e.g. {example}); "
            f"it looks like {_guess_architecture(state)}"
        )


def _model_from_payload(obj: dict[str, Any], path: Path) -> Sam3D:
    """Build and fill a model from a checkpoint dict of either format."""
    if obj.get("format") == FORMAT:
        try:
            config = SamConfig.from_dict(dict(obj["config"]))
            state = obj["state_dict"]
        except (KeyError, TypeError, ValueError) as exc:
            raise PesfError(f"{path} is a damaged PESF checkpoint: {_one_line(exc)}") from None
        metadata = dict(obj.get("metadata") or {})
        trained = bool(metadata.get("trained", True))
        confidence = obj.get("confidence_state_dict")
        confidence_config = obj.get("confidence_config")
    elif "model_state_dict" in obj or _is_state_dict(obj):
        state = obj.get("model_state_dict", obj)
        config = get_config("vit_b_ori")
        metadata = {"format": "sam-med3d"}
        for key in ("epoch", "best_loss", "best_dice"):
            if (value := _plain_number(obj.get(key))) is not None:
                metadata[key] = value
        trained, confidence, confidence_config = True, None, None
    else:
        keys = ", ".join(map(str, list(obj)[:5]))
        raise PesfError(
            f"{path} is not a SAM-Med3D or PESF checkpoint (top-level keys: {keys}); "
            "expected 'model_state_dict' or a PESF checkpoint"
        )
    if not isinstance(state, dict) or not _is_state_dict(state):
        raise PesfError(f"{path} has no usable state dict (tensors by name)")
    with torch.device("meta"):  # no wasted random initialisation: the checkpoint provides every tensor
        model = Sam3D(config)
    _check_fit(model, state, path)
    expected = model.state_dict()
    state = {k: v.to(dtype=expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.trained = trained
    model.metadata = metadata
    model.confidence_state_dict = confidence
    if confidence is not None and confidence_config is not None:
        info = metadata.get("confidence") if isinstance(metadata, dict) else None
        dice_map = info.get("dice_map") if isinstance(info, dict) else None
        model.confidence_module = _confidence_module(confidence_config, confidence, path, dice_map)
    return model


def _confidence_module(config: Any, state: Any, path: Path, dice_map: Any = None) -> torch.nn.Module:
    """Rebuild the PESF confidence module carried by a checkpoint (with its Dice map, if any)."""
    if not isinstance(config, dict) or not isinstance(state, dict) or not _is_state_dict(state):
        raise PesfError(f"{path} has a damaged confidence module (config or weights missing)")
    try:
        return confidence_module_from_state(config, state, dice_map)
    except (TypeError, ValueError) as exc:
        raise PesfError(f"{path} has a damaged confidence module: {_one_line(exc)}") from None


def available_models() -> list[str]:
    """Names accepted by :func:`load_model` besides paths: bundled ``<name>.pt`` files and ``default``."""
    folder = models_dir()
    names = {p.stem for p in folder.glob("*.pt")} if folder.is_dir() else set()
    return sorted(names | {"default"})


def resolve_reference(model: str | Path) -> Path | None:
    """The file a model reference (a path or a bundled model's name) reads, or ``None`` for a name without a
    bundled file (``default`` before a model is bundled, ``scratch:...``)."""
    if isinstance(model, str) and model.startswith("scratch:"):
        return None
    path, name = _resolve(model)
    if name is None:
        return path
    bundled = models_dir() / f"{name}.pt"
    return bundled if bundled.is_file() else None


def _resolve(model: str | Path) -> tuple[Path | None, str | None]:
    """``(path, None)`` for a file reference, ``(None, name)`` for a bundled model name."""
    if isinstance(model, Path):
        return model.expanduser(), None
    text = str(model)
    path = Path(text).expanduser()
    if path.is_file() or not _NAME.match(text) or path.suffix.lower() in _SUFFIXES:
        return path, None
    return None, text


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PesfError(f"unknown device {device!r}: {_one_line(exc)}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PesfError(f"device {device!r} is not available (no CUDA GPU); use --device cpu")
    return dev


def load_model(model: str | Path, device: str | torch.device = "cpu") -> Sam3D:
    """Load a model from a checkpoint path or a bundled model name.

    Args:
        model: a checkpoint file (SAM-Med3D or PESF format) or the name of a bundled model
            (``Resources/Models/<name>.pt``, see :func:`available_models`). ``default`` without a bundled file
            gives an untrained model of the :data:`~pesf.models.config.DEFAULT_CONFIG` configuration
            (fixed seed), marked ``trained = False``. ``scratch:CONFIG`` or ``scratch:CONFIG:SEED`` gives an
            untrained model of that configuration, to train from scratch (e.g. ``scratch:tiny:0``).
        device: where to put the weights.

    Returns:
        The model in eval mode, with ``config``, ``trained``, ``source`` and ``metadata`` set.

    Raises:
        PesfError: missing or unreadable file, refused content, a different architecture, an unknown name, an
            unavailable device.
    """
    dev = _device(device)
    if isinstance(model, str) and model.startswith("scratch:"):
        return _scratch_model(model).to(dev)
    path, name = _resolve(model)
    if name is not None:
        bundled = models_dir() / f"{name}.pt"
        if bundled.is_file():
            path = bundled
        elif name == "default":
            result = build_model(DEFAULT_CONFIG, seed=_UNTRAINED_SEED)
            result.source = f"untrained {DEFAULT_CONFIG} configuration (no bundled default model yet)"
            logger.warning(
                "no bundled default model in %s: using an untrained %s model", models_dir(), DEFAULT_CONFIG
            )
            return result.to(dev)
        else:
            raise PesfError(
                f"unknown model {name!r}: not a file and not a bundled model "
                f"(available: {', '.join(available_models())})"
            )
    assert path is not None
    result = _model_from_payload(read_checkpoint(path), path)
    result.source = str(path.resolve()) if name is None else f"bundled model {name!r} ({path})"
    logger.info("loaded %s model from %s", result.config.name, result.source)
    return result.to(dev).eval()


def _scratch_model(spec: str) -> Sam3D:
    """``scratch:CONFIG[:SEED]``: an untrained model with seeded random weights."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise PesfError(
            f"cannot read model {spec!r}: write scratch:CONFIG or scratch:CONFIG:SEED, e.g. scratch:tiny:0"
        )
    try:
        seed = int(parts[2]) if len(parts) == 3 else _UNTRAINED_SEED
    except ValueError:
        raise PesfError(f"cannot read model {spec!r}: the seed {parts[2]!r} is not a whole number") from None
    try:
        result = build_model(parts[1], seed=seed)
    except (KeyError, ValueError) as exc:
        raise PesfError(f"cannot build model {spec!r}: {exc}") from None
    result.source = f"untrained {parts[1]} configuration (seed {seed})"
    return result.eval()


def _check_plain(value: Any, where: str) -> None:
    """Raise ``ValueError`` unless ``value`` is built from plain containers, scalars and tensors."""
    if value is None or isinstance(value, (str, int, float, bool, Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise ValueError(f"{where} has a key of type {type(key).__name__}; use str or int keys")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise ValueError(f"{where} holds a {type(value).__name__}; checkpoints only carry plain data and tensors")


def save_checkpoint(
    model: Sam3D,
    path: str | Path,
    metadata: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` in the PESF format, atomically (temporary file in the same folder, then rename).

    Args:
        model: the model; its ``metadata`` and confidence module (``confidence_module`` weights and config,
            or a bare ``confidence_state_dict``) are carried along.
        path: destination file (its folder is created).
        metadata: plain entries merged over ``model.metadata`` (``source``, training card, metrics, ...);
            ``created``, ``trained``, ``config_name`` and ``pesf_version`` are filled in when absent.
        extra: further plain top-level entries (e.g. ``optimizer_state_dict`` for resuming).

    Returns:
        The written path.

    Raises:
        ValueError: metadata or extra entries that are not plain data, or extra keys that clash with the format.
    """
    from .. import __version__

    path = Path(path).expanduser()
    meta = {**model.metadata, **(metadata or {})}
    meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    meta.setdefault("trained", bool(model.trained))
    meta.setdefault("config_name", model.config.name)
    meta.setdefault("pesf_version", __version__)
    extra = dict(extra or {})
    clash = sorted(set(extra) & _RESERVED)
    if clash:
        raise ValueError(f"extra entries may not use reserved keys: {', '.join(clash)}")
    _check_plain(meta, "metadata")
    _check_plain(extra, "extra")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": meta,
        **extra,
    }
    module = getattr(model, "confidence_module", None)
    confidence = module.state_dict() if module is not None else model.confidence_state_dict
    if confidence is not None:
        payload["confidence_state_dict"] = {k: v.detach().cpu() for k, v in confidence.items()}
    if module is not None:
        payload["confidence_config"] = module.config.to_dict()

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    logger.info("saved %s checkpoint to %s", model.config.name, path)
    return path


def model_info(model: Sam3D) -> dict[str, Any]:
    """Describe a model for ``pesf info`` and logs.

    Returns:
        ``{"name", "config", "parameters": {"image_encoder", "prompt_encoder", "mask_decoder", "total"},
        "source", "trained", "has_confidence_module", "metadata"}``.
    """
    params = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in _SUBMODULES}
    params["total"] = sum(params.values())
    return {
        "name": model.config.name,
        "config": model.config.to_dict(),
        "parameters": params,
        "source": model.source,
        "trained": bool(model.trained),
        "has_confidence_module": model.confidence_module is not None
        or model.confidence_state_dict is not None,
        "metadata": dict(model.metadata),
    }
