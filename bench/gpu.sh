#!/usr/bin/env bash
# Every GPU check in one script, for a session lent a GPU machine (see DEVELOPERS notes in README/bench).
# Run there with the data cache carried, e.g.:
#   mkdir -p .cache && cp -r ~/.cache/convladder .cache/   (git-ignored; name `.cache` in carry)
#   CONVLADDER_HOME=.cache/convladder PYTHONPATH=src bash bench/gpu.sh
# Prints tables and writes bench/results/*-cuda.md (copy them to $OUT to bring them back).
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-src}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
# 1. time to >= 99.4 % for the reference network, 10 seeds (compile warm-up reported apart)
python bench/bench_train.py --device cuda --seeds 10 --examples-images 60000 | tee "$OUT/train-cuda.txt"
# 2. the whole eip4-s2 ladder, 3 seeds, full length
python - <<'PY' | tee "$OUT/ladder-cuda.txt"
import time, tempfile
from convladder.ladder.ladder import load_ladder
from convladder.ladder.run import run_ladder
t = time.perf_counter()
root = tempfile.mkdtemp()
lad = load_ladder("eip4-s2")
run_ladder(lad, root, seeds=3, device="cuda", echo=print)
print(f"whole ladder, 3 seeds: {time.perf_counter() - t:.1f} s")
print("RUNS", root)
PY
python -m convladder ladder report eip4-s2 --runs "$(grep ^RUNS "$OUT/ladder-cuda.txt" | cut -d" " -f2)" | tee -a "$OUT/ladder-cuda.txt"
# 3. four sweep trials sharing the GPU through Ray (only where ray is installed)
python -c "import ray" 2>/dev/null && python bench/bench_sweep.py --device cuda --gpus-per-trial 0.25 | tee "$OUT/sweep-cuda.txt" || echo "ray not installed: sweep check skipped"
# 4. ASHA early stopping vs the full sweep, trials sharing the GPU
python -c "import ray" 2>/dev/null && python bench/bench_asha.py --device cuda --gpus-per-trial 0.25 --subset 20000 | tee "$OUT/asha-cuda.txt" || echo "ray not installed: ASHA check skipped"
cp bench/results/*cuda* "$OUT"/ 2>/dev/null || true
