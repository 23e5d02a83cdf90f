"""``benchmarks/diffusion.py --smoke`` runs on the CPU with the tiny models and prints its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.recipes import ROOT

pytest.importorskip("diffusers")


@pytest.mark.slow
def test_diffusion_benchmark_smoke_prints_its_json_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "diffusion.py"), "--smoke",
                             "--configs", "sd15_1cn", "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("reference_img_s", "end_to_end_img_s", "ratio", "gpu_busy", "sam_ms_per_img", "write_ms_per_img"):
        assert key in line
    assert line["end_to_end_img_s"] > 0 and 0 < line["gpu_busy"] <= 1
