"""GPU readiness: the full-size gladius-125m distillation step on CUDA in bfloat16 with PyTorch's
SDPA attention, with and without `torch.compile`, for a fixed number of steps; tokens/s and
model FLOPs utilization (MFU).

Writes: a temporary folder (removed unless --keep) holding a project of its own: this
checkout's code, the repository's `pydocs` dataset and model manifests, and a pipeline `gpu`
of a BPE tokenizer (32,000 tokens) trained on pydocs, a teacher of TinyLlama-1.1B's shape
(model tinyllama-1p1b-chat) made by an init step (seeded random weights: its outputs cost what a
trained one's do, and nothing here may reach the hub), and the student (model gladius-125m)
distilled from the teacher's stored top-64 outputs of `--windows` windows, as the default
project's students are. Every step runs through the real `doit`; the student runs once per
`compile` setting asked for (its own key each: compiled kernels round differently).

Tokens/s: of the student's metrics.jsonl, global-batch tokens over the wall time of the steps
after `--warmup` (the compile, and CUDA's first kernels, happen in those). MFU: model FLOPs per
token, 6·N (N = the student's parameters less its input embedding, a lookup) + 12·L·H·T
(attention scores and values, forward and backward: L layers, width H, T tokens of context),
times tokens/s, over the device's peak dense bfloat16 FLOP/s (a table of NVIDIA data-centre
parts below, or --peak-tflops). The teacher's compute is not counted: it ran once, when its
outputs were stored.

`--tiny` takes a small student and teacher, 512 tokens and short windows on the CPU in
float32: the same code path in seconds (tests/test_bench_gpu.py runs it).

Run: `python bench/gpu.py [--steps 50] [--warmup 10] [--compile both|on|off] [--keep]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from common import copy_code, scratch  # noqa: E402

# dense bfloat16 tensor-core peaks (FLOP/s, without sparsity), by a part of torch's device name
PEAKS = {"H200": 989.4e12, "H100 PCIe": 756.5e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362.1e12,
         "A10G": 70e12, "L4": 121e12, "RTX 4090": 165.2e12}
TINY_MODELS = {
    "student": {"hidden_size": 64, "intermediate_size": 128, "layers": 2, "heads": 4, "kv_heads": 2},
    "teacher": {"hidden_size": 96, "intermediate_size": 192, "layers": 2, "heads": 4, "kv_heads": 2},
}


def arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps of the student (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of tokens/s (default 10)")
    parser.add_argument("--compile", choices=("both", "on", "off"), default="both",
                        help="the student with torch.compile, without, or both (default)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--windows", type=int, default=512, help="teacher windows stored (default 512)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak FLOP/s in TFLOP/s, for MFU")
    parser.add_argument("--tiny", action="store_true", help="small models on the CPU in float32: the code path")
    parser.add_argument("--keep", action="store_true", help="keep the scratch project")
    args = parser.parse_args(argv)
    if args.warmup >= args.steps:
        parser.error(f"--warmup ({args.warmup}) must be below --steps ({args.steps})")
    return args


def project(root: Path, args, compiled: list[bool]) -> None:
    """The scratch project: code, pydocs, the two models and pipeline `gpu`."""
    import yaml

    copy_code(root)
    (root / "specs" / "datasets").mkdir(parents=True)
    (root / "specs" / "models").mkdir(parents=True)
    (root / "specs" / "pipelines").mkdir(parents=True)
    (root / "specs" / "datasets" / "pydocs.yaml").write_text((REPO / "specs/datasets/pydocs.yaml").read_text())
    models = {"student": "gladius-125m", "teacher": "tinyllama-1p1b-chat"}
    if args.tiny:
        for role, shape in TINY_MODELS.items():
            spec = {"kind": "model", "name": f"{role}-tiny", **shape, "vocab_size": 512,
                    "max_positions": max(128, args.seq_len)}
            (root / "specs" / "models" / f"{role}-tiny.yaml").write_text(yaml.safe_dump(spec))
            models[role] = f"{role}-tiny"
    else:
        for name in models.values():
            (root / "specs" / "models" / f"{name}.yaml").write_text((REPO / f"specs/models/{name}.yaml").read_text())
    device, dtype = ("cpu", "float32") if args.tiny else ("cuda", "bfloat16")
    student = {"kind": "train", "model": models["student"], "tokenizer": "tok", "data": "pydocs",
               "objective": "distill", "batch_size": args.batch_size, "grad_accum": args.grad_accum,
               "seq_len": args.seq_len, "dtype": dtype, "device": device, "max_steps": args.steps,
               "eval": {"every": args.steps, "batches": 1}, "checkpoints": {"every": args.steps, "keep": 1},
               "distill": {"windows": args.windows, "teachers": {"t": {"step": "teacher"}},
                           "phases": [{"name": "all", "steps": args.steps, "teachers": {"t": 1.0}}]}}
    steps = {"tok": {"kind": "tokenizer", "dataset": "pydocs", "vocab_size": 500 if args.tiny else 32000},
             "teacher": {"kind": "init", "model": models["teacher"], "tokenizer": "tok"}}
    for c in compiled:
        steps[name_of(c)] = {**student, "compile": c}
    (root / "specs" / "pipelines" / "gpu.yaml").write_text(
        yaml.safe_dump({"kind": "pipeline", "name": "gpu", "steps": steps}, sort_keys=False))


def name_of(compiled: bool) -> str:
    return "student-compiled" if compiled else "student"


def flops_per_token(model: dict, seq_len: int) -> float:
    """6·N + 12·L·H·T, N the parameters less the input embedding."""
    h, f, L, v = model["hidden_size"], model["intermediate_size"], model["layers"], model["vocab_size"]
    heads, kv = model["heads"], model.get("kv_heads") or model["heads"]
    d = h // heads
    per_layer = h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * f  # q, k and v, o, the MLP
    n = L * per_layer + v * h  # the LM head is a matmul; the input embedding a lookup
    return 6 * n + 12 * L * h * seq_len


def peak(args) -> tuple[float | None, str]:
    if args.peak_tflops:
        return args.peak_tflops * 1e12, f"{args.peak_tflops:g} TFLOP/s (--peak-tflops)"
    if args.tiny:
        return None, "none known for a CPU: give --peak-tflops"
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    for part, value in PEAKS.items():
        if part in name:
            return value, f"{value / 1e12:g} TFLOP/s, bfloat16 dense, for {name}"
    return None, f"none known for {name}: give --peak-tflops"


def measure(root: Path, step: str, warmup: int) -> dict:
    rows = [json.loads(line) for line in (root / "build" / "gpu" / step / "metrics.jsonl").read_text().splitlines()]
    timed = rows[warmup:]
    seconds = timed[-1]["wall_time"] - rows[warmup - 1]["wall_time"] if warmup else timed[-1]["wall_time"]
    tokens = sum(r["tokens"] for r in timed)
    return {"tokens_per_s": tokens / seconds, "median_step_tokens_per_s": statistics.median(r["tokens_per_s"]
                                                                                           for r in timed),
            "final_loss": rows[-1]["loss"], "steps": len(rows)}


def main(argv=None) -> None:
    args = arguments(argv)
    compiled = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    if not args.tiny:
        import torch

        if not torch.cuda.is_available():
            sys.exit("bench/gpu.py: torch sees no CUDA device; run it on a GPU machine, or with --tiny for the "
                     "CPU code path")
    with scratch("ingot-gpu-", args.keep) as tmp:
        root = tmp / "proj"
        project(root, args, compiled)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run([sys.executable, "-m", "doit", "gpu.teacher", "gpu.tok@pydocs"], cwd=root, env=env, check=True)
        import yaml

        model = yaml.safe_load((root / "specs" / "models" / f"{'student-tiny' if args.tiny else 'gladius-125m'}"
                                                              ".yaml").read_text())
        flops = flops_per_token(model, args.seq_len)
        top, said = peak(args)
        print(f"student: {model['name']}, {args.steps} steps of {args.batch_size}×{args.grad_accum} × "
              f"{args.seq_len} tokens, {'float32 on the CPU' if args.tiny else 'bfloat16 on CUDA'}, SDPA attention; "
              f"{flops:,.0f} FLOP per token; peak: {said}")
        for c in compiled:
            subprocess.run([sys.executable, "-m", "doit", f"gpu.{name_of(c)}"], cwd=root, env=env, check=True)
            m = measure(root, name_of(c), args.warmup)
            mfu = f"{m['tokens_per_s'] * flops / top:.1%}" if top else "n/a"
            print(f"compile {'on ' if c else 'off'}: {m['tokens_per_s']:,.0f} tokens/s after {args.warmup} warmup "
                  f"steps (median step {m['median_step_tokens_per_s']:,.0f}), MFU {mfu}, final loss "
                  f"{m['final_loss']:.4f}")


if __name__ == "__main__":
    main()
