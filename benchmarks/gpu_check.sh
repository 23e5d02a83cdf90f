#!/usr/bin/env bash
# The device check: what a lent GPU must measure, in priority order, inside a time budget.
#
#   bash benchmarks/gpu_check.sh [--budget-s 600] [--out DIR] [--steps a,b] [--wheels DIR]
#   bash benchmarks/gpu_check.sh --dry-run     # the plan and its estimated seconds (CPU, imports nothing heavy)
#   bash benchmarks/gpu_check.sh --smoke       # the same driver on the CPU with tiny models (CI runs it)
#
# 1. Installs what it needs: this project with its test and diffusion extras, keeping the torch
#    it finds (pinned by a constraint, so pip never swaps a CUDA build for another). A machine with
#    no package index (a lent device machine): make the wheels here with
#    `bash benchmarks/gpu_wheels.sh .whl`, carry .whl, and pass --wheels .whl (installed --no-deps).
#    Skipped with --dry-run, and with --smoke when synthgen already imports.
# 2. Runs benchmarks/gpu_check.py: sanity, SD1.5 + 1 ControlNet, SAM's share, SD1.5 + 2
#    ControlNets, then SDXL and FLUX if the budget allows; each step in its own process with its
#    own time limit; one JSON line per measurement on stdout and in DIR/results.jsonl, the log in
#    DIR/gpu_check.log. A failing step is recorded and the next one runs.
set -uo pipefail
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || PYTHON=python
ARGS=() WHEELS="" MODE=run OUT=gpu-check
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS=$(realpath -m "$2"); shift 2 ;;
        --dry-run) MODE=dry; ARGS+=("$1"); shift ;;
        --smoke) MODE=smoke; ARGS+=("$1"); shift ;;
        --out) OUT=$(realpath -m "$2"); ARGS+=("$1" "$OUT"); shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
cd "$(dirname "$0")/.."
[ "$OUT" = gpu-check ] && OUT=$PWD/gpu-check && ARGS+=(--out "$OUT")

install() {
    local pins torch_version
    pins=$(mktemp)
    torch_version=$("$PYTHON" -c "import torch; print(torch.__version__)" 2>/dev/null) \
        && echo "torch==$torch_version" > "$pins"
    local rc
    if [ -n "$WHEELS" ]; then
        # no package index: the wheels of what the machine lacks (benchmarks/gpu_wheels.sh made
        # them), then synthgen itself, all without dependency resolution (the test extra's
        # packages are not needed by the check and are not on such a machine)
        echo "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS and synthgen (no index)" >&2
        PIP_NO_INPUT=1 "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps "$WHEELS"/*.whl >&2 \
            && PIP_NO_INPUT=1 "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps \
                   --no-build-isolation -e . >&2
        rc=$?
        rm -f "$pins"
        return $rc
    fi
    echo "installing synthgen[test,diffusion] (torch ${torch_version:-not found: pip picks one})" >&2
    PIP_NO_INPUT=1 "$PYTHON" -m pip install -q --disable-pip-version-check --retries 1 --timeout 15 -c "$pins" -e ".[test,diffusion]" >&2
    rc=$?
    rm -f "$pins"
    return $rc
}

if [ "$MODE" != dry ]; then
    mkdir -p "$OUT"
    if ! { [ "$MODE" = smoke ] && "$PYTHON" -c "import synthgen, diffusers" 2>/dev/null; }; then
        if ! install && ! "$PYTHON" -c "import synthgen, diffusers, anny" 2>/dev/null; then
            echo '{"config": "install", "status": "failed", "error": "pip install -e .[test,diffusion] failed and synthgen does not import; pass --wheels DIR on a machine without a package index"}' \
                | tee -a "$OUT/results.jsonl"
            exit 1
        fi
    fi
    { command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
      "$PYTHON" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"; \
    } > "$OUT/env.txt" 2>&1
fi
export HF_HUB_OFFLINE=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$HOME/.cache/synthgen/inductor}
exec "$PYTHON" benchmarks/gpu_check.py "${ARGS[@]}"
