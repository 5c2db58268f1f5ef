"""Pseudo-labels: automatic prompts, pseudo-labelling of cases and of whole cohorts into the case store.

* :mod:`pesf.pseudolabel.prompts`: clicks for an organ from a mask, a confident prediction or a prompt file.
* :mod:`pesf.pseudolabel.run`: one case of the store, every requested organ, written as ``pseudo`` organs.
* :mod:`pesf.pseudolabel.cohort`: a folder of images or many cases, resumable, sharded over ``torchrun``
  ranks.
"""

from __future__ import annotations

from pesf.pseudolabel.cohort import CaseJob, plan_cases, pseudo_label_folder, summarize
from pesf.pseudolabel.prompts import (
    Click,
    auto_positive_count,
    prompts_from_confident_region,
    prompts_from_mask,
    prompts_from_points,
)
from pesf.pseudolabel.run import (
    PROMPT_SOURCES,
    default_threshold,
    model_identity,
    pseudo_label_case,
    skip_reason,
)

__all__ = [
    "PROMPT_SOURCES",
    "CaseJob",
    "Click",
    "auto_positive_count",
    "default_threshold",
    "model_identity",
    "plan_cases",
    "prompts_from_confident_region",
    "prompts_from_mask",
    "prompts_from_points",
    "pseudo_label_case",
    "pseudo_label_folder",
    "skip_reason",
    "summarize",
]
