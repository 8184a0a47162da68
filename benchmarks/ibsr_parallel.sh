#!/bin/bash
# The IBSR cross-validation as parallel processes sharing one GPU, one per (fold, network, recipe), POOL
# at a time, whole folds first. One UNet run leaves an H100 or H200 mostly idle: 10 at a time ran
# 5 folds x 2 networks x 2 recipes (30 epochs, every slice, batch 16, the default then) in about 8 minutes on an H200;
# 5 folds x UNet x 2 recipes at the defaults of 2026-11-27 (width 32, batch 4) in 294 s there.
#
#   benchmarks/ibsr_parallel.sh ARCHIVE OUTDIR [POOL] [SECONDS] [JOBS]
#
# ARCHIVE: made once by `mriseg make-archive ... --labels ibsr`. OUTDIR: new or without rows/. POOL: runs
# at a time (10). SECONDS: stop every run after this long (3000); finished runs are kept. JOBS: a file of
# "fold model variant" lines (default: folds 0-4 x resnet, unet x mriseg, tutorial). IBSR_ARGS: ibsr.py's
# other options, split on spaces (default "--folds 5 --epochs 30 --train-stride 1"); PYTHON: the
# interpreter with mriseg importable (python3). Writes OUTDIR/rows.jsonl, OUTDIR/table.md, OUTDIR/logs/;
# exits 1 if a run failed or was stopped.
set -u
if [ $# -lt 2 ]; then echo "usage: $0 ARCHIVE OUTDIR [POOL] [SECONDS] [JOBS]" >&2; exit 2; fi
archive=$1 out=$2 pool=${3:-10} seconds=${4:-3000} jobs=${5:-}
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$archive" ] || { echo "$archive: not found (ARCHIVE)" >&2; exit 2; }
[ -z "$jobs" ] || [ -f "$jobs" ] || { echo "$jobs: not found (JOBS)" >&2; exit 2; }
[ -e "$out/rows" ] && { echo "$out/rows: exists; rows of an earlier sweep would be counted twice (use a new OUTDIR)" >&2; exit 2; }
mkdir -p "$out/logs" "$out/rows"
if [ -z "$jobs" ]; then
  jobs=$out/jobs.txt
  for f in 0 1 2 3 4; do for m in resnet unet; do for v in mriseg tutorial; do echo "$f $m $v"; done; done; done > "$jobs"
fi
# Every run writes a resume file each epoch: in memory where /dev/shm has room. Runs that are stopped
# cannot clean up after themselves, so all of them share one folder that goes at the end.
if [ "$(df -k --output=avail /dev/shm 2>/dev/null | tail -1)" -gt 30000000 ] 2>/dev/null; then
  export TMPDIR=$(mktemp -d /dev/shm/ibsr.XXXXXX)
  trap 'rm -rf "$TMPDIR"' EXIT
fi
export IBSR="$here/ibsr.py" ARCHIVE=$archive OUT=$out PYTHON=${PYTHON:-python3}
export IBSR_ARGS=${IBSR_ARGS-"--folds 5 --epochs 30 --train-stride 1"}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start=$(date +%s)
# timeout leads its own process group: it stops every run when time is up, and the trap stops them on ^C.
timeout "$seconds" xargs -P "$pool" -n 3 bash -c '
  name="$0-$1-$2"
  "$PYTHON" "$IBSR" --archive "$ARCHIVE" $IBSR_ARGS --only-folds "$0" --models "$1" --variants "$2" \
      --jsonl "$OUT/rows/$name.jsonl" --out "$OUT/logs/$name.md" > "$OUT/logs/$name.log" 2>&1
  rc=$?; echo "$(date +%T) $name rc=$rc"; exit $(( rc != 0 ))' < "$jobs" &
sweep=$!
trap 'kill -TERM -- -$sweep 2>/dev/null' INT TERM
wait $sweep; rc=$?
echo "$(( $(date +%s) - start )) s"
[ $rc -eq 124 ] && echo "stopped after $seconds s: unfinished runs are missing from the table" >&2
[ $rc -ne 0 ] && [ $rc -ne 124 ] && echo "a run failed or was interrupted (rc $rc): see $out/logs/" >&2
cat "$out"/rows/*.jsonl > "$out/rows.jsonl" 2>/dev/null
if [ -s "$out/rows.jsonl" ]; then "$PYTHON" "$here/ibsr.py" --table "$out/rows.jsonl" --out "$out/table.md" || rc=1
else echo "no run finished" >&2; rc=1; fi
exit $(( rc != 0 ))
