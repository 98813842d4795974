#!/usr/bin/env bash
# Every GPU check in one script, for a session lent a GPU machine. Whenever a GPU is at hand, run this first.
# Here, once:   mkdir -p .cache && cp -r ~/.cache/convladder .cache/      (git-ignored; carry `.cache`)
# There:        CONVLADDER_HOME=.cache/convladder PYTHONPATH=src bash bench/gpu.sh            (<= 5 min on one H100)
#               ... bash bench/gpu.sh --long     also: eip4-s2 ladder x 5 seeds, sweep/ASHA on Ray (minutes more)
# Prints one table (bench/bench_gpu.py) and writes it to $OUT and bench/results/gpu-cuda.md; at most 4 files in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-src} CONVLADDER_HOME=${CONVLADDER_HOME:-.cache/convladder}
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ ! -d "$CONVLADDER_HOME/data/mnist" ]; then
  echo "no MNIST cache at $CONVLADDER_HOME/data/mnist: copy ~/.cache/convladder to .cache/ and carry .cache" >&2
  exit 2
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
# 1. the table: eager vs CUDA graph, batch 128/512/1024, 1 seed vs 10 seeds (streams: one graph, N branches;
#    grouped: one grouped-convolution model), the two reference recipes.
#    --budget: configurations still to start after it are listed as skipped; timeout: a hard stop (the table
#    is rewritten after every configuration, so what finished is in $OUT either way).
timeout 285 $PY bench/bench_gpu.py --device cuda --budget 215 --out "$OUT" 2>&1 | tee "$OUT/gpu-bench.log"
if [ "${1:-}" = "--long" ]; then
  # 2. the whole eip4-s2 ladder, 5 seeds, full length
  $PY - <<'PY' 2>&1 | tee "$OUT/ladder-cuda.txt"
import time, tempfile
from convladder.ladder.ladder import load_ladder
from convladder.ladder.run import run_ladder
t = time.perf_counter()
root = tempfile.mkdtemp()
run_ladder(load_ladder("eip4-s2"), root, seeds=5, device="cuda", echo=print)
print(f"whole ladder, 5 seeds: {time.perf_counter() - t:.1f} s")
print("RUNS", root)
PY
  $PY -m convladder ladder report eip4-s2 --runs "$(grep ^RUNS "$OUT/ladder-cuda.txt" | cut -d" " -f2)" >> "$OUT/ladder-cuda.txt" 2>&1
  # 3. sweep trials sharing the GPU through Ray, and ASHA (only where ray is installed)
  if $PY -c "import ray" 2>/dev/null; then
    $PY bench/bench_sweep.py --device cuda --gpus-per-trial 0.25 > "$OUT/sweep-cuda.txt" 2>&1
    $PY bench/bench_asha.py --device cuda --gpus-per-trial 0.25 --subset 20000 >> "$OUT/sweep-cuda.txt" 2>&1
  else
    echo "ray not installed: sweep and ASHA checks skipped"
  fi
fi
cp bench/results/*cuda* "$OUT"/ 2>/dev/null || true
