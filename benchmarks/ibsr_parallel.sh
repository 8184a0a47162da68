#!/bin/bash
# The IBSR cross-validation as parallel processes sharing one GPU, one per (fold, network, recipe), POOL
# at a time, whole folds first. One UNet at batch 16 leaves an H100 or H200 mostly idle: 10 at a time ran
# 5 folds x 2 networks x 2 recipes (30 epochs, every slice) in about 8 minutes on an H200.
#
#   benchmarks/ibsr_parallel.sh ARCHIVE OUTDIR [POOL] [SECONDS] [JOBS]
#
# ARCHIVE: made once by `mriseg make-archive ... --labels ibsr`. POOL: runs at a time (10). SECONDS: stop
# everything after this long (3000); finished runs are kept. JOBS: a file of "fold model variant" lines
# (default: folds 0-4 x resnet, unet x mriseg, tutorial). IBSR_ARGS: the other ibsr.py options (default
# "--folds 5 --epochs 30 --train-stride 1"). Writes OUTDIR/rows.jsonl, OUTDIR/table.md, OUTDIR/logs/.
set -u
archive=$1 out=$2 pool=${3:-10} seconds=${4:-3000} jobs=${5:-}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out/logs" "$out/rows"
if [ -z "$jobs" ]; then
  jobs=$out/jobs.txt
  for f in 0 1 2 3 4; do for m in resnet unet; do for v in mriseg tutorial; do echo "$f $m $v"; done; done; done > "$jobs"
fi
# Resume files are written every epoch: keep them in memory where /dev/shm has room.
[ "$(df -k --output=avail /dev/shm 2>/dev/null | tail -1)" -gt 30000000 ] 2>/dev/null && export TMPDIR=/dev/shm
export IBSR="$here/ibsr.py" ARCHIVE=$archive OUT=$out IBSR_ARGS=${IBSR_ARGS:---folds 5 --epochs 30 --train-stride 1}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start=$(date +%s)
timeout "$seconds" xargs -P "$pool" -L 1 bash -c '
  name="$0-$1-$2"
  python3 "$IBSR" --archive "$ARCHIVE" $IBSR_ARGS --only-folds "$0" --models "$1" --variants "$2" \
      --jsonl "$OUT/rows/$name.jsonl" --out "$OUT/logs/$name.md" > "$OUT/logs/$name.log" 2>&1
  rc=$?; echo "$(date +%T) $name rc=$rc"' < "$jobs"
pkill -f -- "--archive $archive " 2>/dev/null  # timeout stops xargs, not the runs it started
echo "$(( $(date +%s) - start )) s"
cat "$out"/rows/*.jsonl > "$out/rows.jsonl" 2>/dev/null
if [ -s "$out/rows.jsonl" ]; then python3 "$here/ibsr.py" --table "$out/rows.jsonl" --out "$out/table.md"; else echo "no run finished"; exit 1; fi
