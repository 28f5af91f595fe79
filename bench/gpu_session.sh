#!/usr/bin/env bash
# Issue 6 on a lent GPU, in phases that fit the device tool's limits (10 min per call, 15 min
# of device time per session). Each phase writes JSON (and the log) to $OUT, so what finished
# comes back even when a later phase runs out of time. Run from the repository root:
#
#   bash bench/gpu_session.sh main       # ~5 min: all workloads eager, then HiP compiled
#   bash bench/gpu_session.sh more       # ~5 min: ablations, scaling, data side
#
# The GPU image has torch, transformers, timm and matplotlib. The data phase also needs the
# wheels in .whl/ (see docs/BENCHMARKS.md, "Running issue 6 on a GPU") and the ISBI images
# copied to .bench-data/ (ignored by git, named in the device tool's `carry`).
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"

phase() {  # phase NAME SECONDS COMMAND...: run with a limit, keep its log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]}"
}

case "${1:-main}" in
  main)
    phase perf_eager 170 "$PY" bench/perf.py --compile none --profile --out "$OUT/perf_eager.json"
    phase perf_compiled 250 "$PY" bench/perf.py --compile model \
      --workloads hip16_full,hip16_mae,hip16_classify,hip256_mae,vit_b16 --out "$OUT/perf_compiled.json"
    ;;
  more)
    phase ablate 170 "$PY" bench/perf.py --compile none --steps 10 --warmup 3 \
      --workloads hip16_full,hip16_mae \
      --ablate compile-blocks,fp32,foreach-adamw,no-step-read,sdpa-flash,sdpa-efficient,sdpa-cudnn,sdpa-math,mae-embed-all \
      --out "$OUT/ablate.json"
    phase scaling 80 "$PY" bench/perf.py --compile none --batch-size 16 --steps 10 --warmup 3 \
      --scaling 64,128,224,384,512 --plot "$OUT/scaling.png" --out "$OUT/scaling.json"
    if [ -d .bench-data ]; then
      phase data_wait 150 "$PY" bench/data_wait.py --shared-data .bench-data --max-workers 12 --mnist-steps 0 \
        --out "$OUT/data_wait.json"
    fi
    ;;
  *)
    echo "usage: bash bench/gpu_session.sh main|more" >&2
    exit 2
    ;;
esac
