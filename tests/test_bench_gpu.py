"""bench/gpu.py's code path on the CPU (`--tiny`): the same project, steps and measurement as on a
GPU, with and without torch.compile; the compiled student trains as the eager one does."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow  # torch.compile of a tiny model on the CPU (~1-2 min on 2 cores)
def test_the_gpu_bench_runs_its_path_on_the_cpu_with_and_without_compile():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--tiny", "--steps", "6", "--warmup", "2",
                             "--seq-len", "64", "--batch-size", "4", "--grad-accum", "1", "--windows", "32",
                             "--peak-tflops", "0.2"], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(("student:", "compile "))]
    # the tiny student: 2 layers of width 64 (4 heads, 2 of keys and values), MLP 128, 512 tokens
    flops = 6 * (2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 512 * 64) + 12 * 2 * 64 * 64
    assert lines[0] == (f"student: student-tiny, 6 steps of 4×1 × 64 tokens, float32 on the CPU, SDPA attention; "
                        f"{flops:,} FLOP per token; peak: 0.2 TFLOP/s (--peak-tflops)")
    pattern = re.compile(r"compile (on |off): ([\d,]+) tokens/s after 2 warmup steps \(median step [\d,]+\), "
                         r"MFU ([\d.]+)%, final loss ([\d.]+)")
    found = [pattern.fullmatch(line) for line in lines[1:]]
    assert len(found) == 2 and all(found), lines
    assert [m.group(1) for m in found] == ["off", "on "]
    for m in found:
        tokens = int(m.group(2).replace(",", ""))
        assert tokens > 0
        assert abs(float(m.group(3)) - 100 * tokens * flops / 0.2e12) < 0.06  # MFU as printed, rounded
    assert abs(float(found[0].group(4)) - float(found[1].group(4))) < 1e-3  # compiled kernels train the same
