#!/usr/bin/env bash
# The issue-12 checks a CUDA machine can run and a CPU cannot, in one go (about 10-15 minutes on
# one H100/H200 for SD1.5 + SDXL; add flux_2cn with CONFIGS=... when there is time and ~40 GB of
# disk). Run from the repository root in an environment with synthgen[diffusion] and a CUDA torch:
#
#   bash benchmarks/gpu_check.sh                 # SD1.5 (1 and 2 ControlNets), then SDXL
#   CONFIGS=sd15_1cn BATCHES=8 bash benchmarks/gpu_check.sh
#
# 1. the GPU tests (pytest -m gpu) and the CPU tests of the GPU paths (tests/test_gpu_busy.py);
# 2. benchmarks/diffusion.py: reference vs backend vs end to end, random full-size weights built
#    on the GPU (nothing downloaded), compiled (kernels cached in ~/.cache/synthgen/inductor).
# Everything goes to ${OUT:-gpu-check}/: the pytest log, the benchmark log and its JSON line.
set -euo pipefail
OUT=${OUT:-gpu-check}
CONFIGS=${CONFIGS:-sd15_1cn,sd15_2cn,sdxl_1cn}
BATCHES=${BATCHES:-8}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$HOME/.cache/synthgen/inductor}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'; print(torch.__version__)"
python -m pytest -q -x tests/test_gpu_busy.py -m "not slow" 2>&1 | tail -n 20 | tee "$OUT/pytest.txt"
python -m pytest -q -m gpu tests 2>&1 | tail -n 20 | tee -a "$OUT/pytest.txt" || true
python benchmarks/diffusion.py --configs "$CONFIGS" --batches "$BATCHES" --out "${MODELS:-$HOME/.cache/synthgen/bench-diffusion}" \
    2>&1 | tee "$OUT/benchmark.txt"
tail -n 1 "$OUT/benchmark.txt" > "$OUT/benchmark.json"
echo "results in $OUT/ (the table is in benchmark.txt, the JSON line in benchmark.json)"
