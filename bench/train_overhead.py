"""Tokens per second of Ingot's training loop against a bare torch loop, in the same run.

Writes: a temporary folder (removed unless --keep) with a BPE tokenizer trained by
targets/tokenizer on the pydoc topics that ship with CPython, those topics tokenized by
targets/tokens into a memmapped stream, and the work and output folders of the train jobs.

Both sides train the same Llama model (width 128, 4 layers, 2,048-token vocabulary, from
the same seeded initialization) with the same batch (8 sequences of 128 tokens), AdamW,
gradient clipping at 1.0, on random windows of the same memmapped stream, on the same
device. The named peer is the bare loop: sample windows, forward, cross-entropy,
backward, clip, step, nothing else. Ingot's side is `targets.train.build` itself on a job
whose evaluation and checkpoint cadences never fire before the last step; its speed is
read from the `wall_time` of its metrics.jsonl lines after the warmup steps and before the
last step (which evaluates and checkpoints), so it counts everything the loop does per
step: sampling, schedule, metrics line, progress line, NaN guard. Sides alternate (bare,
Ingot, Ingot, bare, ...) so drifting machine load hits both. Two ratios: of the median
over runs of tokens/s over each whole timed span, and (on a CPU) of the median step's
tokens/s, which a load spike from another process on a shared machine barely moves.

Run: `python bench/train_overhead.py [--steps 300] [--warmup 20] [--rounds 4] [--keep]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compiler.specs import ModelSpec, TokenizerStep, TokensStep, TrainStep  # noqa: E402
from compiler.inputs import DATASET, TOKENIZER, Input  # noqa: E402
from compiler.inputs import tokens as tokens_input  # noqa: E402
from targets import Job  # noqa: E402

from common import scratch  # noqa: E402

MODEL = {"kind": "model", "name": "bench", "hidden_size": 128, "intermediate_size": 384, "layers": 4,
         "heads": 4, "kv_heads": 2, "vocab_size": 2048, "max_positions": 256}
BATCH, SEQ, LR, SEED = 8, 128, 3e-4, 0


def corpus() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def prepare(tmp: Path) -> dict[str, Path]:
    """Tokenizer and tokens entries, made by Ingot's own builders."""
    from targets import tokenizer, tokens

    data = tmp / "dataset"
    data.mkdir()
    texts = corpus()
    (data / "train-00000.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:-20]))
    (data / "validation-00000.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[-20:]))
    tok_spec = TokenizerStep(kind="tokenizer", dataset="docs", vocab_size=MODEL["vocab_size"])
    (tmp / "tok").mkdir()
    tokenizer.build(Job("bench.tok", tok_spec, tmp / "tok", inputs={DATASET: data}))
    (tmp / "tokens").mkdir()
    tokens.build(Job("bench.tok@docs", TokensStep(kind="tokens", dataset="docs", tokenizer="bench.tok"),
                     tmp / "tokens", inputs={DATASET: data, TOKENIZER: tmp / "tok"}))
    return {TOKENIZER: tmp / "tok", tokens_input("docs"): tmp / "tokens"}


def train_spec(steps: int) -> TrainStep:
    never = 10**9  # evaluation and checkpoints fire only at the last step
    return TrainStep(kind="train", model="bench", tokenizer="bench.tok", data="docs", max_steps=steps,
                     batch_size=BATCH, seq_len=SEQ, clip=1.0, seed=SEED, optimizer={"lr": LR},
                     schedule={"kind": "constant"}, eval={"every": never, "batches": 1},
                     checkpoints={"every": never, "keep": 1})


def ingot(inputs: dict[Input, Path], tmp: Path, steps: int, warmup: int, n: int, spec=None) -> list[float]:
    """Ends of Ingot's steps (seconds), from the wall_time of its own metrics.jsonl: from the
    last warmup step to the step before the last (the last one evaluates and checkpoints).
    `spec`: the train step to run (default: this bench's `train_spec(steps)`)."""
    from targets import train

    out, work = tmp / f"ingot{n}" / "out", tmp / f"ingot{n}" / "work"
    out.mkdir(parents=True)
    work.mkdir()
    job = Job("bench.train", spec or train_spec(steps), out, inputs=inputs, models={"model": ModelSpec(**MODEL)},
              root=tmp, work=work)
    train.build(job)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(tmp / f"ingot{n}")
    return [r["wall_time"] for r in rows[warmup - 1:-1]]


def bare(inputs: dict[Input, Path], steps: int, warmup: int) -> list[float]:
    """Ends of the steps of a plain torch loop over the same model, batch, optimizer and
    stream, from the last warmup step to the step before the last, as for Ingot."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from targets import special_ids
    from targets.weights import hf_config, init_state

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    meta = json.loads((inputs[tokens_input("docs")] / "tokens.json").read_text())
    stream = np.memmap(inputs[tokens_input("docs")] / "train.bin", dtype=meta["dtype"], mode="r")
    spec, ids = ModelSpec(**MODEL), special_ids(inputs[TOKENIZER])
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(LlamaConfig(**hf_config(spec, ids, "float32")))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in init_state(spec, ids, SEED).items()})
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    rng = np.random.default_rng(SEED)
    span = np.arange(SEQ + 1)
    ends = []
    for step in range(steps - 1):
        starts = rng.integers(0, len(stream) - SEQ - 1, BATCH)
        batch = torch.from_numpy(stream[starts[:, None] + span].astype(np.int64)).to(device)
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda" and step in (warmup - 1, steps - 2):
            torch.cuda.synchronize()  # only around the timed span: the bare loop never waits otherwise
        ends.append(time.perf_counter())
    return ends[warmup - 1:]


def rates(ends: list[float]) -> tuple[float, float]:
    """(tokens/s over the whole span, tokens/s of the median step: robust to load spikes)."""
    tokens = BATCH * SEQ
    steps = [b - a for a, b in zip(ends, ends[1:])]
    return tokens * len(steps) / (ends[-1] - ends[0]), tokens / statistics.median(steps)


def arguments(steps: int):
    """The command line every overhead bench takes: steps, warmup, rounds, --keep."""
    ap = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=steps, help="optimizer steps per run of each side")
    ap.add_argument("--warmup", type=int, default=20, help="steps of each run left out of its timing")
    ap.add_argument("--rounds", type=int, default=4, help="runs of each side, alternating")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return ap.parse_args()


def alternate(sides, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Run `sides(n)` (a list of (name, run) whose run returns step end times) for n in rounds, in
    ABBA order (whatever the first run of a round pays, a cold allocator or a load spike, is
    paid by each side in turn); print each round and the medians; return tokens/s by side over
    whole runs and at the median step (medians over the rounds)."""
    runs: dict[str, list[tuple[float, float]]] = {}
    for n in range(rounds):
        pairs = sides(n)
        for name, run in pairs[::-1] if n % 2 else pairs:
            runs.setdefault(name, []).append(rates(run()))
        print(f"round {n + 1}: " + ", ".join(f"{k} {v[-1][0]:,.0f} tok/s (median step {v[-1][1]:,.0f} tok/s)"
                                               for k, v in runs.items()), flush=True)
    whole = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    step = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
    for k in runs:
        print(f"{k}: {whole[k]:,.0f} tokens/s over whole runs, {step[k]:,.0f} tokens/s at the median step "
              f"(medians of {rounds} runs)")
    return whole, step


def main() -> None:
    args = arguments(300)
    import torch

    with scratch("ingot-bench-train-", args.keep) as tmp:
        inputs = prepare(tmp)
        meta = json.loads((inputs[tokens_input("docs")] / "tokens.json").read_text())
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"model width {MODEL['hidden_size']}, {MODEL['layers']} layers, vocab {MODEL['vocab_size']:,}; "
              f"batch {BATCH} x seq {SEQ}; {args.steps} steps per run ({args.warmup} warmup), "
              f"{args.rounds} rounds; {meta['splits']['train']['tokens']:,} train tokens; {device}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
        whole, step = alternate(lambda n: [("bare torch", lambda: bare(inputs, args.steps, args.warmup)),
                                           ("ingot", lambda: ingot(inputs, tmp, args.steps, args.warmup, n))],
                                args.rounds)
        print(f"ratio ingot / bare torch, whole runs: {whole['ingot'] / whole['bare torch']:.3f} (goal >= 0.95)")
        if device == "cpu":  # on a GPU the bare loop's steps are not synchronized one by one
            print(f"ratio ingot / bare torch, median step: {step['ingot'] / step['bare torch']:.3f}")


if __name__ == "__main__":
    main()
