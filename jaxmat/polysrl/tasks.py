"""Property-prediction tasks: bundled Matbench composition datasets or any formula,target CSV."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxmat.data.formulas import parse_formula
from jaxmat.errors import FormulaError, JaxmatInputError
from jaxmat.resources import resource_path

log = logging.getLogger(__name__)

BUNDLED = {"expt_gap": "expt_gap.csv", "expt_is_metal": "expt_is_metal.csv"}
MATBENCH_SEED = 18012019
TRUE_WORDS, FALSE_WORDS = {"1", "1.0", "true", "yes"}, {"0", "0.0", "false", "no"}


@dataclass
class Task:
    """Rows kept (formulas, float targets), 'regression' or 'classification', and rows skipped (row number, reason)."""

    name: str
    formulas: list[str]
    targets: np.ndarray
    kind: str
    skipped: list[tuple[int, str]] = field(default_factory=list)


def load_task(task: str, kind: str | None = None) -> Task:
    """A bundled task name (expt_gap, expt_is_metal) or a CSV path with formula,target columns.

    kind: 'regression' | 'classification' | None (detected: targets all 0/1 or True/False -> classification).
    Unparsable formulas are skipped and reported with their row numbers (header = row 1).
    """
    path = resource_path(BUNDLED[task]) if task in BUNDLED else Path(task)
    if not path.exists():
        raise JaxmatInputError(f"task {task!r} is neither a bundled task ({', '.join(BUNDLED)}) nor an existing CSV file")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in ("formula", "target") if c not in columns]
        if missing:
            raise JaxmatInputError(f"{path} lacks column(s) {missing} (has {columns})")
        rows = list(reader)
    raw = [r["target"].strip() for r in rows]
    if kind is None:
        kind = "classification" if all(v.lower() in TRUE_WORDS | FALSE_WORDS for v in raw) else "regression"
    if kind not in ("regression", "classification"):
        raise JaxmatInputError(f"task type must be regression or classification, got {kind!r}")
    formulas, targets, skipped = [], [], []
    for number, (row, value) in enumerate(zip(rows, raw), start=2):
        try:
            parse_formula(row["formula"])
        except FormulaError as exc:
            skipped.append((number, str(exc)))
            continue
        if kind == "classification":
            if value.lower() not in TRUE_WORDS | FALSE_WORDS:
                raise JaxmatInputError(f"{path} row {number}: classification target {value!r} is not binary (0/1, True/False)")
            target = 1.0 if value.lower() in TRUE_WORDS else 0.0
        else:
            try:
                target = float(value)
            except ValueError:
                skipped.append((number, f"target {value!r} is not a number"))
                continue
            if not np.isfinite(target):
                skipped.append((number, f"target {value!r} is not finite"))
                continue
        formulas.append(row["formula"])
        targets.append(target)
    if skipped:
        log.warning("%s: skipped %d rows: %s", path.name, len(skipped), "; ".join(f"row {n}: {why}" for n, why in skipped[:10]))
    return Task(str(task), formulas, np.asarray(targets, float), kind, skipped)


def matbench_folds(n_rows: int, n_folds: int = 5, seed: int = MATBENCH_SEED):
    """Matbench's split: sklearn KFold(n_splits, shuffle=True, random_state=18012019) -> [(train, test)]."""
    from sklearn.model_selection import KFold

    if n_rows < n_folds:
        raise JaxmatInputError(f"the task has {n_rows} usable rows, fewer than the {n_folds} folds asked for")
    return list(KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.arange(n_rows)))
