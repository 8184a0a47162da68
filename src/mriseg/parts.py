"""A cohort in shares: `--part K/N` segments every N-th input from the K-th into volumes.part-K-of-N.csv (a job
array, or one torchrun process each), and merge_parts joins the parts into volumes.csv in input order."""
import hashlib
import re
from pathlib import Path

import pandas as pd

from .inputs import InputError
from .io import atomic_path
from .qc import add_cohort_flags


def input_list_id(files):
    """What a part was one share of: the whole input list, in order (its sha256, short)."""
    return hashlib.sha256("\n".join(str(Path(f).resolve()) for f in files).encode()).hexdigest()[:16]


def part_name(k, n):
    return f"volumes.part-{k}-of-{n}.csv"


def merge_parts(out_dir, n=None, total=None, log=print):
    """volumes.part-K-of-N.csv (every K of one N; found in out_dir when n is None) -> volumes.csv, rows
    in input order, text as the parts wrote it; the part files go once merged."""
    out_dir = Path(out_dir)
    if n is None:
        counts = {int(m.group(1)) for p in out_dir.glob("volumes.part-*-of-*.csv")
                  if (m := re.fullmatch(r"volumes\.part-\d+-of-(\d+)\.csv", p.name))}
        if len(counts) != 1:
            raise InputError(f"{out_dir}: expected the part files of one run (volumes.part-K-of-N.csv), found "
                             f"{'parts of ' + ', '.join(map(str, sorted(counts))) if counts else 'none'}")
        n = counts.pop()
    paths = [out_dir / part_name(k, n) for k in range(1, n + 1)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise InputError(f"{out_dir}: {', '.join(missing)} missing: run those parts first (--part K/{n})")
    parts = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in paths]
    for k, (path, part) in enumerate(zip(paths, parts)):
        if any(int(i) % n != k for i in part["input"]):
            raise InputError(f"{path}: holds inputs of another share than part {k + 1} of {n}")
    table = pd.concat(parts).sort_values("input", key=lambda column: column.astype(int))
    counts = set(table["inputs"].astype(int)) | ({total} if total is not None else set())
    if len(counts) > 1 or table["input_list"].nunique() > 1 or table["input"].duplicated().any():
        # Parts of different input lists (another INPUT set or order) would interleave the wrong rows.
        of = " and ".join(map(str, sorted(counts))) if len(counts) > 1 else f"{counts.pop()} each, other files or order"
        raise InputError(f"{out_dir}: the part files come from different lists of inputs (of {of} inputs): "
                         "run every --part with the same INPUTs")
    table = add_cohort_flags(table.drop(columns=["input", "inputs", "input_list"]))  # judged over the whole run
    with atomic_path(out_dir / "volumes.csv") as tmp:
        table.to_csv(tmp, index=False)
    for p in paths:
        p.unlink()
    of = f" of {total}" if total is not None else ""
    log(f"segmented {len(table)}{of} inputs in {n} parts -> {out_dir} (volumes.csv)")
    return len(table)
