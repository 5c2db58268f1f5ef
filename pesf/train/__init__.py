"""PESF training: the case store, and (being built) the trainer, confidence filtering and curriculum."""

from __future__ import annotations

from pesf.train.store import CaseData, CaseRecord, CaseStore, OrganRecord

__all__ = ["CaseData", "CaseRecord", "CaseStore", "OrganRecord"]

# ----------------------------------------------------------------------------------- trainer and worker
# Imported on first use: they import torch, and the case store must stay usable without it.
_LAZY = {
    "TrainConfig": "pesf.train.config",
    "load_config": "pesf.train.config",
    "Trainer": "pesf.train.trainer",
    "DistContext": "pesf.train.distributed",
    "setup_distributed": "pesf.train.distributed",
    "read_status": "pesf.train.status",
    "request_stop": "pesf.train.worker",
    "run_training": "pesf.train.worker",
    "latest_version": "pesf.train.worker",
    "list_versions": "pesf.train.worker",
}
__all__ += list(_LAZY)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pesf.train' has no attribute {name!r}")
