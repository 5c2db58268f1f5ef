"""``pesf cases add|list|remove``: the cases of a workspace, the case store that PESF training reads."""

from __future__ import annotations

import argparse
import getpass
import json
from pathlib import Path

import numpy as np

from pesf.cli import register
from pesf.errors import PesfError

__all__ = ["run_cases"]


@register("cases")
def run_cases(args: argparse.Namespace) -> int:
    actions = {"add": _add, "list": _list, "remove": _remove}
    if args.cases_command not in actions:
        raise PesfError("give an action: pesf cases add, pesf cases list or pesf cases remove")
    return actions[args.cases_command](args)


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):
        return ""


def _add(args: argparse.Namespace) -> int:
    from pesf.io import parse_organs_arg, read_labelmap, read_volume
    from pesf.train.store import CaseStore, OrganRecord, case_id_from_name, check_case, check_case_id

    if args.status not in ("accepted", "pseudo"):
        raise PesfError(f"status {args.status!r} is not accepted or pseudo; give --status accepted or pseudo")
    organs = parse_organs_arg(args.organs) if args.organs is not None else None
    case_id = check_case_id(args.case_id) if args.case_id is not None else case_id_from_name(args.image)
    workspace = Path(args.workspace)
    # An existing workspace is checked before any volume is read; a new one is created only at the end.
    store = CaseStore(workspace) if (workspace / "workspace.json").exists() else None
    if store is not None and store.has_case(case_id) and not args.overwrite:
        raise PesfError(
            f"case {case_id!r} already exists in {workspace}; give another --case-id, or --overwrite to replace it"
        )

    image = read_volume(args.image)
    label, segments = read_labelmap(args.label, like=image)
    if organs is None:
        if not segments:
            raise PesfError(
                f"label map {args.label} holds no organ names; give them with --organs NAME=VALUE,..."
            )
        organs = {info.name: value for value, info in segments.items()}
    counts = np.bincount(np.asarray(label.array).ravel())
    unnamed = [v for v in np.flatnonzero(counts).tolist() if v and v not in organs.values()]
    if unnamed and not args.ignore_unnamed:
        if len(unnamed) == 1:
            v = unnamed[0]
            raise PesfError(
                f"label value {v} has no organ name; give it with --organs NAME={v} or remove it "
                "(--ignore-unnamed sets it to background)"
            )
        raise PesfError(
            f"label values {_short_list(unnamed)} have no organ names; give them with --organs "
            f"NAME={unnamed[0]},... or remove them (--ignore-unnamed sets them to background)"
        )
    if unnamed:
        voxels = np.isin(label.array, unnamed)
        label = label.with_array(np.where(voxels, 0, label.array))
        print(
            f"set {int(voxels.sum())} voxels of {len(unnamed)} label values not named in --organs "
            f"({_short_list(unnamed)}) to background"
        )

    author = args.author if args.author is not None else _user_name()
    records = [
        OrganRecord(name, value, args.status, source="import", author=author)
        for name, value in organs.items()
    ]
    check_case(image, label, records)  # every problem is reported before the workspace is created
    if store is None:
        store = CaseStore(workspace, create=True)
    record = store.add_case(image, label, records, case_id=case_id, overwrite=args.overwrite)
    print(f"case {record.case_id} (revision {record.revision}) in {workspace}")
    for r in record.organs_with_status():
        print(f"  {r.name:<24} value {r.value:>5}  {r.status}")
    return 0


def _short_list(values: list[int], limit: int = 8) -> str:
    return ", ".join(map(str, values[:limit])) + (", ..." if len(values) > limit else "")


def _list(args: argparse.Namespace) -> int:
    from pesf.train.store import CaseStore

    store = CaseStore(args.workspace)
    records = store.list_cases()
    if args.json:
        print(json.dumps({"workspace": str(store.root), "cases": [r.to_dict() for r in records]}, indent=2))
        return 0
    if not records:
        print(f"no cases in {store.root}; add cases with `pesf cases add`")
        return 0
    rows = [("CASE", "REV", "ORGAN", "VALUE", "STATUS", "CONFIDENCE", "SOURCE", "AUTHOR")]
    totals = {"accepted": 0, "pseudo": 0, "rejected": 0}
    for record in records:
        first = True
        for r in record.organs_with_status() or [None]:
            case, rev = (record.case_id, str(record.revision)) if first else ("", "")
            first = False
            if r is None:
                rows.append((case, rev, "(no organs)", "", "", "", "", ""))
                continue
            totals[r.status] += 1
            confidence = "-" if r.confidence is None else f"{r.confidence:.2f}"
            rows.append((case, rev, r.name, str(r.value), r.status, confidence, r.source, r.author))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    organs = sum(totals.values())
    summary = ", ".join(f"{n} {status}" for status, n in totals.items() if n)
    print(f"{len(records)} cases, {organs} organs" + (f": {summary}" if summary else ""))
    return 0


def _remove(args: argparse.Namespace) -> int:
    from pesf.train.store import CaseStore, check_case_id

    store = CaseStore(args.workspace)
    store.remove_case(check_case_id(args.case_id))
    print(f"removed case {args.case_id} from {store.root}")
    return 0
