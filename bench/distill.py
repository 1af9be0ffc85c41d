"""A distilling student's step time with stored teacher outputs against running the teacher
live, in the same run; and what the stored outputs take on disk per million tokens.

Writes: a temporary folder (removed unless --keep) with the tokenizer and tokens entries of
bench/train_overhead.py (a BPE tokenizer of 2,048 tokens trained by targets/tokenizer on the
pydoc topics that ship with CPython, the topics tokenized by targets/tokens), a teacher made by
targets/init (Llama, width 256, 6 layers, 8 heads; seeded random weights: its outputs cost the
same to compute and to store as a trained one's), the teacher-outputs entries made by
targets/teacher for top_k 16, 64 and all, and the work and output folders of the train jobs.

Both sides run `targets.train.build` on the same student (bench/train_overhead.py's: width
128, 4 layers, from the same seeded initialization), batch 8 × 128, distilling from that
teacher at T 2, alpha 0.5, with evaluation and checkpoints only at the last step. The named
peer is the live teacher: the same train step given the teacher's weights entry and no stored
outputs, so the teacher runs forward on every micro-batch beside the student (as a `path:`
teacher does, and as every teacher did before teacher outputs were stored). Ingot's side reads
the top-64 entry: whole stored windows and their top-64 log-probabilities (float16) instead of
the teacher. Speeds are read from the `wall_time` of each run's metrics.jsonl lines after the
warmup steps and before the last step, as bench/train_overhead.py reads them; sides alternate
(live, stored, stored, live, ...). Two ratios: of the median over runs of tokens/s over each
whole timed span, and of the median step's tokens/s. The one-time cost of the stored side (the
teacher run over the whole train split) is printed beside them: the break-even is the number
of student steps after which storing has paid for itself.

Sizes: the bytes of each entry's files (manifest.json aside), per train token (= MB per million
tokens), and what float32 log-probabilities would take instead of the float16 ones stored.

Run: `python bench/distill.py [--steps 200] [--warmup 20] [--rounds 4] [--keep]`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from compiler.inputs import MODEL as MODEL_INPUT, TOKENIZER, Input  # noqa: E402
from compiler.inputs import teacher as teacher_input  # noqa: E402
from compiler.inputs import teacher_outputs  # noqa: E402
from compiler.inputs import tokens as tokens_input  # noqa: E402
from compiler.specs import InitStep, ModelSpec, TeacherOutputsStep, TrainStep  # noqa: E402
from targets import Job  # noqa: E402
from common import scratch  # noqa: E402
from train_overhead import BATCH, SEED, SEQ, alternate, arguments, ingot, prepare  # noqa: E402

TEACHER = {"kind": "model", "name": "teacher", "hidden_size": 256, "intermediate_size": 768, "layers": 6,
           "heads": 8, "kv_heads": 4, "vocab_size": 2048, "max_positions": 256}
TEMPERATURE, KS = 2.0, (16, 64, "all")


def make_teacher(tmp: Path, inputs: dict[Input, Path]) -> Path:
    from targets import init

    out = tmp / "teacher"
    out.mkdir()
    init.build(Job("bench.teacher", InitStep(kind="init", model="teacher", tokenizer="bench.tok", seed=1), out,
                   inputs={TOKENIZER: inputs[TOKENIZER]}, models={"model": ModelSpec(**TEACHER)}))
    return out


def store_outputs(tmp: Path, inputs: dict[Input, Path], teacher: Path, k) -> tuple[Path, float, dict]:
    """A teacher-outputs entry of top_k `k`: its folder, build seconds and teacher.json."""
    from targets import teacher as builder

    out = tmp / f"outputs-k{k}"
    out.mkdir()
    spec = TeacherOutputsStep(kind="teacher_outputs", teacher="bench.teacher", dataset="docs", tokenizer="bench.tok",
                              align="same", top_k=k, seq_len=SEQ, temperature=TEMPERATURE)
    t0 = time.perf_counter()
    info = builder.build(Job(f"bench.teacher~k{k}", spec, out,
                             inputs={MODEL_INPUT: teacher, tokens_input("docs"): inputs[tokens_input("docs")]}))
    return out, time.perf_counter() - t0, info


def student_spec(steps: int) -> TrainStep:
    never = 10**9  # evaluation and checkpoints fire only at the last step
    return TrainStep(kind="train", model="bench", tokenizer="bench.tok", data="docs", objective="distill",
                     batch_size=BATCH, seq_len=SEQ, clip=1.0, seed=SEED, optimizer={"lr": 3e-4},
                     schedule={"kind": "constant"}, eval={"every": never, "batches": 1},
                     checkpoints={"every": never, "keep": 1},
                     distill={"teachers": {"t": {"step": "bench.teacher"}}, "temperature": TEMPERATURE, "alpha": 0.5,
                              "top_k": 64, "phases": [{"steps": steps, "teachers": {"t": 1.0}}]})


def entry_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name != "manifest.json")


def main() -> None:
    args = arguments(200)
    import torch

    with scratch("ingot-bench-distill-", args.keep) as tmp:
        inputs = prepare(tmp)
        teacher = make_teacher(tmp, inputs)
        train_tokens = json.loads((inputs[tokens_input("docs")] / "tokens.json").read_text())["splits"]["train"]["tokens"]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"student width 128, 4 layers; teacher width {TEACHER['hidden_size']}, {TEACHER['layers']} layers; "
              f"vocab {TEACHER['vocab_size']:,}; batch {BATCH} x seq {SEQ}; T {TEMPERATURE:g}; {args.steps} steps per "
              f"run ({args.warmup} warmup), {args.rounds} rounds; {train_tokens:,} train tokens; {device}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
        stored, one_time = {}, 0.0
        for k in KS:
            folder, seconds, info = store_outputs(tmp, inputs, teacher, k)
            size = entry_bytes(folder)
            stored[k] = folder
            wider = size + info["groups"] * info["k"] * 2  # the same with float32 log-probabilities
            print(f"top_k {k}: built in {seconds:.1f} s ({info['forwards']} teacher forwards over {info['windows']:,} "
                  f"windows of {SEQ}), {size / 1e6:,.1f} MB = {size / info['tokens']:,.0f} bytes per token = "
                  f"{size / info['tokens']:,.0f} MB per 1M tokens (float32 log-probabilities: "
                  f"{wider / info['tokens']:,.0f})", flush=True)
            if k == 64:
                one_time = seconds
        base = {TOKENIZER: inputs[TOKENIZER], tokens_input("docs"): inputs[tokens_input("docs")],
                teacher_input("t"): teacher}
        with_outputs = {**base, teacher_outputs("t", "docs", SEQ): stored[64]}
        spec = student_spec(args.steps)
        whole, step = alternate(
            lambda n: [("live teacher", lambda: ingot(base, tmp, args.steps, args.warmup, f"live{n}", spec)),
                       ("stored top-64", lambda: ingot(with_outputs, tmp, args.steps, args.warmup, f"stored{n}", spec))],
            args.rounds)
        print(f"ratio stored / live teacher, whole runs: {whole['stored top-64'] / whole['live teacher']:.2f}")
        print(f"ratio stored / live teacher, median step: {step['stored top-64'] / step['live teacher']:.2f}")
        saved = BATCH * SEQ / whole["live teacher"] - BATCH * SEQ / whole["stored top-64"]
        if saved > 0:
            print(f"storing the top-64 took {one_time:.1f} s once, {saved * 1e3:.1f} ms saved per student step: "
                  f"paid back after {one_time / saved:,.0f} student steps (every later student and edit: free)")


if __name__ == "__main__":
    main()
