#!/usr/bin/env bash
# Wheels for the device check on a machine with no package index (a lent GPU machine: Python 3.12,
# x86-64, with torch, transformers, accelerate, OpenCV, SciPy, matplotlib already in its image).
#
#   bash benchmarks/gpu_wheels.sh [DIR]      # default .whl; then: gpu_check.sh --wheels DIR
#
# Downloads, without dependencies, exactly the packages synthgen's runtime and diffusion extra need
# that such an image lacks. NVIDIA Warp (warp-lang, 146 MB) is left out on purpose: the working
# tree that travels to the machine is limited to 64 MiB, and without Warp Anny skins with its own
# torch LBS (synthgen.subjects.anny_body). Fails when the folder would not fit beside the repository.
set -euo pipefail
DIR=${1:-.whl}
PYTHON=${PYTHON:-python3}
LIMIT_MIB=${LIMIT_MIB:-60}
PACKAGES=(anny roma diffusers importlib-metadata compel webdataset braceexpand omegaconf
          antlr4-python3-runtime pydantic pydantic-core annotated-types typing-inspection
          moderngl glcontext trimesh smplx)
mkdir -p "$DIR"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DIR" "${PACKAGES[@]}"
size=$(du -sm "$DIR" | cut -f1)
echo "$(ls "$DIR"/*.whl | wc -l) wheels, ${size} MiB in $DIR" >&2
if [ "$size" -gt "$LIMIT_MIB" ]; then
    echo "gpu_wheels: $DIR holds ${size} MiB, more than ${LIMIT_MIB} MiB: remove old versions (one of each) and rerun" >&2
    exit 1
fi
