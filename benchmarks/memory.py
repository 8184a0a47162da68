"""Memory of `dvc repro train` against the size of the training set: streaming from disk stays flat.

For each cohort size it generates (in a temporary folder, never in the repository) a zip of synthetic
labelled volumes of 128 x 128 x 128, laid out as IBSR is published (<s>/<s>.nii.gz + <s>/<s>_seg.nii.gz,
IBSR's labels): a rounded box of gray matter around white matter inside a thin rim of CSF, all borders
bent by smooth random fields, filling nearly the whole volume, so that ~120 of the 128 axial slices of
each volume hold tissue (tests/conftest.py's ellipsoids keep ~77): 16 volumes make ~2,000 slices and
160 ~20,000. It copies the DVC project into a fresh git repository there, runs `dvc repro unzip split`
(not measured), then `python -m dvc repro train@axial` (one view) for one epoch on the CPU while sampling, every
--interval seconds, the anonymous memory of the whole process tree below it (dvc, the train stage and
its DataLoader workers): the sum of Pss_Anon from /proc/<pid>/smaps_rollup. Memory-mapped volume
files are page cache (reclaimable, shared), so RSS would count them and mislead; Pss_Anon does not.

The stages run with OMP_NUM_THREADS=1 (--threads): on 2 cores shared with other work, 2 OpenMP threads
made a training step ~10x slower than 1; memory is the point here, and 1 thread keeps an epoch of
~19,000 slices near 10 minutes (~30 images/s).

Every size streams (train.device_cache_gb=0); the smallest one is also run with the in-memory loader
(train.device_cache_gb=8: the whole split held in RAM, what training did before streaming) as the
baseline. The target: peak anonymous memory at ~20,000 slices <= 3 GB and <= 1.25 x the ~2,000-slice
streaming figure.

    python benchmarks/memory.py                                   # 16 and 160 volumes, ~16 min on 2 cores
    python benchmarks/memory.py --subjects 4,8 --keep             # a quick look; keeps the temporary projects
    python benchmarks/memory.py --out benchmarks/results/speed/memory-cpu.md

Needs Linux (/proc, kernel >= 5.14 for Pss_Anon) and ~3 GB of free disk per 100 volumes.
"""
import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from conftest import make_project, nifti_gz_bytes, set_params  # noqa: E402  (the tests' project copy)
from mriseg.devices import cpu_name, usable_cores  # noqa: E402
from mriseg.training import read_timing  # noqa: E402

SHAPE = (128, 128, 128)
MB = 2**20


# ---------------------------------------------------------------- synthetic cohort

def smooth_field(rng, grid, terms=6, amplitude=0.03):
    """A smooth random field over the grid: a sum of a few low-frequency 3-D cosines."""
    field = np.zeros(grid.shape[1:], np.float32)
    for _ in range(terms):
        k = rng.normal(0, 3, 3).astype(np.float32)
        field += np.float32(rng.uniform(0.3, 1) * amplitude) * np.cos(
            np.tensordot(k, grid, 1) + np.float32(rng.uniform(0, 2 * np.pi)))
    return field


def phantom(rng, shape=SHAPE):
    """A labelled head filling nearly the whole volume (IBSR labels: 0 background, 1 CSF, 2 GM, 3 WM) and a
    T1-like int16 image (WM brightest, a smooth random gain, noise in the head), 1 mm isotropic."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij"))
    radius = rng.uniform(0.93, 0.98, 3).astype(np.float32)[:, None, None, None]
    r = ((np.abs(grid / radius) ** 4).sum(0)) ** 0.25  # a superellipsoid: a rounded box
    labels = np.zeros(shape, np.uint8)
    labels[r < 1.0] = 1
    labels[r < 0.95 + smooth_field(rng, grid)] = 2
    labels[r < 0.7 + smooth_field(rng, grid, amplitude=0.08)] = 3
    gain = 1 + smooth_field(rng, grid, amplitude=0.05)
    image = np.choose(labels, [0.0, 40.0, 110.0, 170.0]) * gain + rng.normal(0, 6, shape) * (labels > 0)
    return np.clip(image, 0, None).astype(np.int16), labels, np.eye(4)


def cohort(path, n, seed):
    """A zip of n phantoms, s001/s001.nii.gz + s001/s001_seg.nii.gz, ... (stored: the .gz are compressed)."""
    import zipfile

    import nibabel as nib

    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(1, n + 1):
            image, labels, affine = phantom(rng)
            s = f"s{i:03d}"
            zf.writestr(f"{s}/{s}.nii.gz", nifti_gz_bytes(nib.Nifti1Image(image, affine)))
            zf.writestr(f"{s}/{s}_seg.nii.gz", nifti_gz_bytes(nib.Nifti1Image(labels, affine)))
    return path


# ---------------------------------------------------------------- process-tree memory, from /proc

def _ppids():
    """{pid: ppid} of every process visible now."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # comm (field 2) may hold spaces and parentheses: fields after the last ')' are fixed.
            out[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return out


def tree(root):
    """root and every process below it."""
    children = {}
    for pid, ppid in _ppids().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def pss_anon(pid):
    """Pss_Anon of one process in bytes (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss_Anon:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    raise SystemExit("/proc/<pid>/smaps_rollup has no Pss_Anon (Linux >= 5.14 needed)")


def role(pid, ppid_of, cmd_of):
    """dvc, train (the stage's process), worker (a process forked by it) or other (a shell, git...)."""
    cmd = cmd_of.get(pid, "")
    parent_cmd = cmd_of.get(ppid_of.get(pid), "")
    if "stages/train.py" in cmd:
        return "worker" if "stages/train.py" in parent_cmd else "train"
    if "dvc" in cmd:
        return "dvc"
    return "other"


def cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def watch(cmd, cwd, env, interval, log_path):
    """Run cmd; every `interval` s sum Pss_Anon over its process tree. Returns (returncode, seconds, peak
    bytes, {role: bytes} at the peak, {role: peak bytes of one process}, samples [(t, total, by role)])."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak, at_peak, per_process, samples, cmd_of = 0, {}, {}, [], {}
        while True:
            done = proc.poll() is not None
            ppid_of = _ppids()
            pids = tree(proc.pid) if not done else []
            total, by_role = 0, {}
            for pid in pids:
                if pid not in cmd_of:
                    cmd_of[pid] = cmdline(pid)
                anon = pss_anon(pid)
                if anon is None:
                    continue
                r = role(pid, ppid_of, cmd_of)
                total += anon
                by_role[r] = by_role.get(r, 0) + anon
                per_process[r] = max(per_process.get(r, 0), anon)
            if pids:
                samples.append((time.perf_counter() - t0, total, by_role))
            if total > peak:
                peak, at_peak = total, by_role
            if done:
                break
            time.sleep(interval)
    return proc.returncode, time.perf_counter() - t0, peak, at_peak, per_process, samples


# ---------------------------------------------------------------- one cohort, one project

def git_describe():
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine():
    model = cpu_name()
    cores = usable_cores()
    ram = next((int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), 0)
    return f"{model}, {cores} cores, {ram / 2**30:.0f} GiB RAM, Linux {platform.release()}"


def images_per_s(project):
    """The last epoch's training images/s, as the train stage logged it (logs/train/axial.tsv)."""
    timing = project / "logs" / "train" / "axial.tsv"
    return read_timing(timing)[-1]["images_per_s"] if timing.exists() else float("nan")


def slice_counts(project):
    with (project / "data" / "manifest.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["view"] == "axial"]  # the one view trained here
    return len(rows), sum(r["split"] == "train" for r in rows)


def run_dvc(args, cwd, env, log_path):
    with open(log_path, "a") as log:
        r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, stdout=log,
                           stderr=subprocess.STDOUT)
    if r.returncode:
        sys.exit(f"dvc {' '.join(args)} failed in {cwd} ({r.returncode}); log: {log_path}\n"
                 + Path(log_path).read_text()[-3000:])


def measure(project, env, loader, cache_gb, interval, tag):
    """`dvc repro train` with train.device_cache_gb=cache_gb, memory sampled; one result row."""
    set_params(project, {"train.device_cache_gb": cache_gb})
    log_path = project.parent / f"train-{tag}.log"
    print(f"  dvc repro train ({loader}) ...", file=sys.stderr, flush=True)
    rc, seconds, peak, at_peak, per_process, samples = watch(
        [sys.executable, "-m", "dvc", "repro", "train@axial"], project, env, interval, log_path)
    if rc:
        sys.exit(f"dvc repro train failed ({rc}); log: {log_path}\n" + log_path.read_text()[-3000:])
    with (project.parent / f"memory-{tag}.csv").open("w") as f:  # the series, kept with --keep
        f.write("seconds,total_mb,dvc_mb,train_mb,worker_mb,other_mb\n")
        for t, total, by in samples:
            f.write(f"{t:.2f},{total / MB:.1f}," + ",".join(f"{by.get(r, 0) / MB:.1f}"
                                                           for r in ("dvc", "train", "worker", "other")) + "\n")
    slices, train_slices = slice_counts(project)
    row = {"subjects": None, "slices": slices, "train_slices": train_slices, "loader": loader,
           "peak_mb": peak / MB, "images_per_s": images_per_s(project), "seconds": seconds,
           "at_peak": {k: v / MB for k, v in at_peak.items()},
           "largest": {k: v / MB for k, v in per_process.items()}, "samples": len(samples)}
    print(f"  {loader}: peak anon {row['peak_mb']:.0f} MB, {row['images_per_s']:.1f} images/s, {seconds:.0f} s",
          file=sys.stderr, flush=True)
    return row


def run_size(n, args, overrides, workdir, env, baseline):
    folder = workdir / f"subjects-{n}"
    folder.mkdir()
    t0 = time.perf_counter()
    archive = cohort(folder / "cohort.zip", n, seed=n)
    print(f"{n} subjects: cohort {archive.stat().st_size / MB:.0f} MB in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr, flush=True)
    project = make_project(folder / "project", {**overrides, "data.archive": str(archive), "views": {"axial": {}}})
    t0 = time.perf_counter()
    run_dvc(["repro", "unzip", "split"], project, env, folder / "prepare.log")
    print(f"  unzip + split in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    rows = [measure(project, env, "streaming", 0, args.interval, "streaming")]
    if baseline:
        rows.append(measure(project, env, "in memory (device_cache_gb=8)", 8, args.interval, "in-memory"))
    for r in rows:
        r["subjects"] = n
    if not args.keep:  # the next size's gigabytes need the room
        shutil.rmtree(folder, ignore_errors=True)
    return rows


# ---------------------------------------------------------------- report

def env_threads(args):
    if args.threads:
        return f"{args.threads} (OMP_NUM_THREADS={args.threads})"
    return os.environ.get("OMP_NUM_THREADS", f"every core ({usable_cores()})")


def report(rows, args, overrides, elapsed):
    import torch

    lines = [f"# Memory of `dvc repro train`, one epoch on the CPU ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {machine()}; torch {torch.__version__}; mriseg at {git_describe()}.",
             f"Synthetic cohorts of {' x '.join(map(str, SHAPE))} volumes (phantoms filling the volume), "
             f"2 test subjects. Memory: peak of the sum of Pss_Anon over the process tree of "
             f"`python -m dvc repro train` (dvc, the train stage, and the train.workers={args.workers} loader workers of "
             f"each split it reads, alive for one pass), "
             f"sampled every {args.interval} s; page cache of the memory-mapped volumes is not counted. "
             f"Torch threads of the stages: {env_threads(args)}.", "",
             "| subjects | slices | train slices | loader | peak anonymous MB | images/s | train stage s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['subjects']} | {r['slices']} | {r['train_slices']} | {r['loader']} | "
                     f"{r['peak_mb']:.0f} | {r['images_per_s']:.1f} | {r['seconds']:.0f} |")
    streaming = [r for r in rows if r["loader"] == "streaming"]
    lines.append("")
    if len(streaming) > 1:
        small, large = min(streaming, key=lambda r: r["slices"]), max(streaming, key=lambda r: r["slices"])
        ratio = large["peak_mb"] / small["peak_mb"]
        ok = large["peak_mb"] <= 3 * 1024 and ratio <= 1.25
        lines.append(f"Streaming, {large['slices']} slices against {small['slices']}: peak anonymous memory "
                     f"{ratio:.2f}x ({large['peak_mb']:.0f} / {small['peak_mb']:.0f} MB); target <= 1.25x and "
                     f"<= 3072 MB: {'met' if ok else 'MISSED'}.")
        lines.append("")
    lines += ["Where the peak sits (MB of Pss_Anon at the peak sample, by process; largest single process of "
              "each kind over the run in parentheses):", "",
              "| subjects | loader | dvc | train stage | loader workers | other | samples |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r['at_peak'].get(k, 0):.0f} ({r['largest'].get(k, 0):.0f})" for k in ("dvc", "train", "worker", "other")]
        lines.append(f"| {r['subjects']} | {r['loader']} | " + " | ".join(cells) + f" | {r['samples']} |")
    params = {**overrides, "data.archive": "<generated cohort zip>", "train.device_cache_gb": "0 (streaming) | 8 (in memory)"}
    lines += ["", "Params (the rest as in params.yaml): " + ", ".join(f"{k}={v}" for k, v in params.items()) + ".",
              f"Whole benchmark: {elapsed / 60:.1f} min (cohort generation and preprocessing included).",
              "", f"    python benchmarks/memory.py {' '.join(sys.argv[1:])}"]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", default="16,160", help="cohort sizes in volumes, comma separated (default 16,160)")
    p.add_argument("--workers", type=int, default=2, help="train.workers: DataLoader worker processes (default 2)")
    p.add_argument("--width", type=int, default=16, help="train.width of the UNet (default 16)")
    p.add_argument("--batch-size", type=int, default=16, help="train.batch_size (default 16)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of the stages (default 1; 0 = the pipeline's own default, every core). On a "
                        "machine shared with other work, 2 OpenMP threads on 2 cores run a step ~10x slower than 1")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between memory samples (default 0.2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another params.yaml override, e.g. --set train.amp=false (repeatable)")
    p.add_argument("--out", type=Path, help="also write the Markdown report here (refuses an existing file)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (cohorts, projects, logs, series)")
    args = p.parse_args()
    if args.out is not None and args.out.exists():
        sys.exit(f"{args.out} exists: remove it first or choose another --out")
    sizes = sorted(int(s) for s in args.subjects.split(","))
    if sizes[0] < 3:
        sys.exit("--subjects: at least 3 per cohort (2 are test subjects)")
    if not Path("/proc/self/smaps_rollup").exists():
        sys.exit("needs Linux's /proc/<pid>/smaps_rollup")

    overrides = {"train.epochs": 1, "train.device": "cpu", "train.workers": args.workers, "train.width": args.width,
                 "train.batch_size": args.batch_size, "split.test_size": 2, "split.val_size": 0,
                 "train.flip_tta": False, "data.min_tissue": 100}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--set {item}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    t0 = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="mriseg-memory-"))
    print(f"working in {workdir}", file=sys.stderr, flush=True)
    rows = []
    try:
        for i, n in enumerate(sizes):
            rows += run_size(n, args, overrides, workdir, env, baseline=i == 0)
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(rows, args, overrides, time.perf_counter() - t0)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("x") as f:
            f.write(text)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
