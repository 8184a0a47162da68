"""Compare DVC experiments: `dvc exp show --json` -> one row per finished experiment -> groups by the
params that differ -> a Markdown table (mean ± sd per group, paired gains, wins) and a PNG of the scores.

Runs are paired across groups by PAIRING (the same fold and seed), so a gain is measured on the same test
subjects with the same initialisation; split_views adds each view alone of a multi-view run. Everything in
the table comes from DVC's own records: the params each experiment ran with, its reports/metrics.json
(which names the device and torch version), its commit.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from .errors import MrisegError

PAIRING = ("split.fold", "train.seed")
# Two runs are a pair only when they tested the same subjects: same archive, labels and split of it.
TEST_SIDE = ("data.archive", "data.labels", "split.by", "split.seed", "split.folds", "split.test_size")
METRICS = ("dice_white_matter", "dice_gray_matter")
METRICS_FILE = "reports/metrics.json"


class ExperimentsError(MrisegError):
    """No experiment to compare, or dvc could not list them."""


def dvc_exp_show(all_commits=False, cwd="."):
    """The parsed `dvc exp show --json` of the DVC project at cwd (the dvc of this interpreter)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise ExperimentsError(f"{Path(cwd).resolve()}: dvc exp show failed: {last}")
    return json.loads(r.stdout)


def read_saved_show(path):
    """A `dvc exp show --json` saved to a file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ExperimentsError(f"{path}: cannot read a saved `dvc exp show --json` ({e})") from None


def flatten(tree, prefix=""):
    """{'train': {'seed': 0}} -> {'train.seed': 0}; an empty mapping stays a value ({})."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def finished_experiments(show):
    """Rows of {name, rev, commit, params (flat), metrics} for every experiment that ran to the end
    (queued, running and failed ones have no metrics to compare)."""
    rows = []
    for commit in show:
        if commit.get("rev") == "workspace":
            continue
        for exp in commit.get("experiments") or []:
            if (exp.get("executor") or {}).get("state", "success") != "success":
                continue
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                params = data.get("params", {}).get("params.yaml", {}).get("data")
                metrics = data.get("metrics", {}).get(METRICS_FILE, {}).get("data")
                if params and metrics:
                    rows.append({"name": rev.get("name") or exp.get("name") or rev["rev"][:7], "rev": rev["rev"],
                                 "commit": commit["rev"], "params": flatten(params), "metrics": metrics})
    return rows


def select(rows, where):
    """The rows whose params match every KEY=VALUE of where (values compared as printed: train.epochs=4)."""
    conditions = []
    for text in where:
        key, sep, value = text.partition("=")
        if not sep:
            raise ExperimentsError(f"--where {text}: expected KEY=VALUE, e.g. train.epochs=30")
        conditions.append((key, value))
    chosen = [r for r in rows if all(str(r["params"].get(k)) == v for k, v in conditions)]
    if rows and not chosen:
        raise ExperimentsError(f"--where {' '.join(where)}: none of the {len(rows)} finished experiments matches")
    return chosen


def split_views(rows):
    """Each run as its aggregate and as each view alone (`views.<view>` of reports/metrics.json), told apart
    by a `scored` setting: the groups then show what aggregation gains over one view, paired on the same
    test subjects and training (a view alone is exactly a one-view run of the same fold and seed)."""
    split = []
    for r in rows:
        split.append({**r, "params": {**r["params"], "scored": "aggregate"}})
        for view, scores in sorted((r["metrics"].get("views") or {}).items()):
            split.append({**r, "params": {**r["params"], "scored": f"{view} alone"},
                          "metrics": {**scores, "trained_on": r["metrics"].get("trained_on")}})
    return split


def label(settings):
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "all runs"


def group_runs(rows):
    """{group label: rows}, the group being the params that differ between runs, less the pairing keys."""
    keys = sorted({k for r in rows for k in r["params"]})
    differ = [k for k in keys if k not in PAIRING
              and len({json.dumps(r["params"].get(k), sort_keys=True) for r in rows}) > 1]
    groups = {}
    for r in rows:
        r["group"] = label({k: r["params"].get(k) for k in differ})
        groups.setdefault(r["group"], []).append(r)
    return groups, differ


def pair_key(row):
    """Fold and seed, then what fixes the test side: runs with the same key scored the same subjects."""
    return tuple(json.dumps(row["params"].get(k), sort_keys=True) if k in TEST_SIDE else row["params"].get(k)
                 for k in PAIRING + TEST_SIDE)


def mean_sd(values):
    values = np.asarray(values, float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def seed_sd(runs, metrics):
    """The seed-to-seed spread, {metric: sd across seeds within a fold, pooled over the folds run with two
    or more seeds}; None when none was. A gain below it is not told apart from a change of seed."""
    by_fold = {}
    for r in runs:
        by_fold.setdefault(r["params"].get(PAIRING[0]), []).append(r["metrics"])
    repeated = [fold for fold in by_fold.values() if len(fold) > 1]
    if not repeated:
        return None
    return {m: float(np.sqrt(np.mean([np.var([s[m] for s in fold], ddof=1) for fold in repeated])))
            for m in metrics}


def compare(rows, metrics=METRICS, baseline=None):
    """The comparison of finished experiment rows: per-run rows, per-group summaries and paired gains
    against the baseline group (the given label, else the first group in sorted order)."""
    if not rows:
        raise ExperimentsError("no finished experiment with reports/metrics.json: queue some with "
                               "`dvc exp run --queue ...`, run them with `dvc queue start`, wait for "
                               "`dvc queue status`")
    missing = sorted({m for r in rows for m in metrics if not isinstance(r["metrics"].get(m), (int, float))})
    if missing:
        raise ExperimentsError(f"{METRICS_FILE} of some experiments has no number for {', '.join(missing)}")
    groups, differ = group_runs(rows)
    for name, runs in groups.items():
        seen = {}
        for r in runs:
            other = seen.setdefault(pair_key(r), r)
            if other is not r:
                raise ExperimentsError(f"experiments {other['name']} and {r['name']} both ran {name} with "
                                       f"{', '.join(f'{k}={v}' for k, v in zip(PAIRING, pair_key(r)))}: "
                                       "remove one (dvc exp remove) so that each pair is counted once")
    names = sorted(groups)
    if baseline is not None and baseline not in groups:
        raise ExperimentsError(f"--baseline {baseline!r} is none of the groups: {'; '.join(names)}")
    base = baseline or names[0]
    base_runs = {pair_key(r): r for r in groups[base]}
    summary = []
    for name in names:
        runs = groups[name]
        entry = {"group": name, "runs": len(runs), "scores": {m: mean_sd([r["metrics"][m] for r in runs])
                                                              for m in metrics}}
        spread = seed_sd(runs, metrics)
        if spread:
            entry["seed_sd"] = spread
        pairs = [(r, base_runs[pair_key(r)]) for r in runs if pair_key(r) in base_runs]
        if name != base and pairs:
            entry["pairs"] = len(pairs)
            gains = [{"params": r["params"], "metrics": {m: r["metrics"][m] - b["metrics"][m] for m in metrics}}
                     for r, b in pairs]
            entry["gain"] = {m: mean_sd([g["metrics"][m] for g in gains]) for m in metrics}
            entry["wins"] = {m: sum(g["metrics"][m] > 0 for g in gains) for m in metrics}
            spread = seed_sd(gains, metrics)
            if spread:  # the noise a gain is to be judged against
                entry["gain_seed_sd"] = spread
        summary.append(entry)
    runs = sorted(rows, key=lambda r: (names.index(r["group"]), *map(str, pair_key(r)), r["name"]))
    return {"metrics": list(metrics), "differ": differ, "baseline": base, "groups": summary, "runs": runs}


def short(metric):
    return metric.replace("dice_", "Dice ").replace("iou_", "IoU ").replace("_", " ")


def markdown(result):
    """The per-run table, then the per-group table with gains over the baseline."""
    metrics = result["metrics"]
    lines = ["| experiment | group | " + " | ".join(PAIRING) + " | " + " | ".join(map(short, metrics)) + " |",
             "|---" * (2 + len(PAIRING) + len(metrics)) + "|"]
    for r in result["runs"]:
        lines.append(f"| {r['name']} | {r['group']} | " + " | ".join(str(r["params"].get(k)) for k in PAIRING)
                     + " | " + " | ".join(f"{r['metrics'][m]:.4f}" for m in metrics) + " |")
    seeds = any("seed_sd" in g for g in result["groups"])  # a column only when some fold ran two seeds
    lines += ["", "| group | runs | " + " | ".join(f"{short(m)} mean ± sd" for m in metrics) + " | "
              + "".join(f"seed sd {short(m)} | " for m in metrics if seeds)
              + " | ".join(f"gain {short(m)} (wins)" for m in metrics) + " |",
              "|---" * (2 + (2 + seeds) * len(metrics)) + "|"]
    for g in result["groups"]:
        cells = [f"{g['scores'][m][0]:.4f} ± {g['scores'][m][1]:.4f}" for m in metrics]
        if seeds:
            cells += [f"{g['seed_sd'][m]:.4f}" if "seed_sd" in g else "one seed" for m in metrics]
        if "gain" in g:
            spread = {m: f"; seed sd {g['gain_seed_sd'][m]:.4f}" if "gain_seed_sd" in g else "" for m in metrics}
            cells += [f"{g['gain'][m][0]:+.4f} ± {g['gain'][m][1]:.4f} ({g['wins'][m]}/{g['pairs']}{spread[m]})"
                      for m in metrics]
        else:
            cells += ["baseline" if g["group"] == result["baseline"] else "no pairs"] * len(metrics)
        lines.append(f"| {g['group']} | {g['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def records(result):
    """Where the numbers come from: commits, the params every run shares, device and torch version."""
    runs = result["runs"]
    shared = {k: v for k, v in runs[0]["params"].items() if k not in result["differ"] and k not in PAIRING}
    machines = sorted({json.dumps(r["metrics"].get("trained_on") or {}, sort_keys=True) for r in runs})
    return {"commits": sorted({r["commit"] for r in runs}), "experiments": {r["name"]: r["rev"] for r in runs},
            "differ": result["differ"], "pairing": list(PAIRING), "params": shared,
            "trained_on": [json.loads(m) for m in machines]}


def report(result):
    """The Markdown a results file holds: the tables and the records they come from."""
    rec = records(result)
    machines = "; ".join(f"{m.get('device', '?')}, torch {m.get('torch', '?')}" for m in rec["trained_on"])
    return "\n".join([
        f"# Experiments compared: {', '.join(rec['differ']) or 'one group'}", "",
        f"Commit(s): {', '.join(c[:12] for c in rec['commits'])}. Trained on: {machines}. "
        f"Runs are paired by {', '.join(PAIRING)}; the baseline group is `{result['baseline']}`; "
        "gains are per pair, mean ± sd, wins = pairs where the group scores higher.", "",
        markdown(result), "",
        "Params every run shares (params.yaml, flattened), and each experiment's git ref:", "",
        "```json", json.dumps({"params": rec["params"], "experiments": rec["experiments"]}, indent=1,
                              sort_keys=True), "```", ""])


def plot(result, path):
    """Per-pair scores, one panel per metric, one line per group: the spread and the pairing at a glance."""
    from .reporting import plt, save_figure

    metrics, runs = result["metrics"], result["runs"]
    pairs = sorted({pair_key(r) for r in runs}, key=lambda p: tuple(map(str, p)))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for g in result["groups"]:
            mine = {pair_key(r): r["metrics"][metric] for r in runs if r["group"] == g["group"]}
            xs = [i for i, p in enumerate(pairs) if p in mine]
            ax.plot(xs, [mine[pairs[i]] for i in xs], "-o", ms=5, label=f"{g['group']} (n={g['runs']})")
        ax.set_xticks(range(len(pairs)), ["\n".join(f"{k.split('.')[-1]} {v}" for k, v in zip(PAIRING, p))
                                          for p in pairs], fontsize=7)
        ax.set_ylabel(short(metric))
        ax.set_title(f"{short(metric)} per fold and seed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)
