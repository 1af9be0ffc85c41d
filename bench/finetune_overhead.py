"""Step time of Ingot's LoRA fine-tune step against a bare peft + torch loop, in the same run.

Writes: a temporary folder (removed unless --keep) with the tokenizer and tokens entries of
bench/train_overhead.py (its `prepare`: targets/tokenizer and targets/tokens on the pydoc
topics that ship with CPython), an init entry made by targets/init, and the work and output
folders of the train jobs.

Both sides fine-tune the same Llama model as bench/train_overhead.py (width 128, 4 layers,
2,048-token vocabulary), starting from the same init weights, through the same peft LoRA
(rank 8, alpha 16, on every linear layer of the decoder), with the same batch (8 sequences
of 128 tokens), AdamW over the adapters only, gradient clipping at 1.0, on random windows of
the same memmapped stream, on the same device. The named peer is the bare loop: sample
windows, forward, cross-entropy, backward, clip, step, nothing else. Ingot's side is
`targets.train.build` itself on a job with `lora:` whose evaluation and checkpoint cadences
never fire before the last step; its speed is read from the `wall_time` of its metrics.jsonl
lines after the warmup steps and before the last step (which evaluates, checkpoints and
merges), so it counts everything the loop does per step. Sides alternate (bare, Ingot,
Ingot, bare, ...) so drifting machine load hits both. Two ratios of Ingot's time per step to
the bare loop's (goal <= 1.05): of the medians over runs of each whole timed span, and (on a
CPU) of the median steps, which a load spike from another process barely moves.

Run: `python bench/finetune_overhead.py [--steps 300] [--warmup 20] [--rounds 4] [--keep]`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import scratch  # noqa: E402
from train_overhead import BATCH, LR, MODEL, SEED, SEQ, alternate, arguments, ingot, prepare  # noqa: E402

from compiler.inputs import INIT, TOKENIZER, Input  # noqa: E402
from compiler.inputs import tokens as tokens_input  # noqa: E402
from compiler.specs import InitStep, ModelSpec, TrainStep  # noqa: E402
from targets import Job  # noqa: E402

LORA = {"r": 8, "alpha": 16.0}  # every target module: q, k, v, o, gate, up, down


def init_entry(inputs: dict[Input, Path], tmp: Path) -> Path:
    """The seeded initial weights both sides fine-tune, made by Ingot's init builder."""
    from targets import init

    out = tmp / "init"
    out.mkdir()
    init.build(Job("bench.init", InitStep(kind="init", model="bench", tokenizer="bench.tok", seed=SEED), out,
                   inputs={TOKENIZER: inputs[TOKENIZER]}, models={"model": ModelSpec(**MODEL)}))
    return out


def train_spec(steps: int) -> TrainStep:
    never = 10**9  # evaluation and checkpoints fire only at the last step
    return TrainStep(kind="train", init="bench.init", tokenizer="bench.tok", data="docs", max_steps=steps,
                     batch_size=BATCH, seq_len=SEQ, clip=1.0, seed=SEED, optimizer={"lr": LR}, lora=LORA,
                     schedule={"kind": "constant"}, eval={"every": never, "batches": 1},
                     checkpoints={"every": never, "keep": 1})


def bare(inputs: dict[Input, Path], steps: int, warmup: int) -> list[float]:
    """Ends of the steps of a plain peft + torch loop over the same model, adapters, batch,
    optimizer and stream, from the last warmup step to the step before the last, as for Ingot."""
    import time

    import numpy as np
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    meta = json.loads((inputs[tokens_input("docs")] / "tokens.json").read_text())
    stream = np.memmap(inputs[tokens_input("docs")] / "train.bin", dtype=meta["dtype"], mode="r")
    torch.manual_seed(SEED)
    base = AutoModelForCausalLM.from_pretrained(inputs[INIT], dtype=torch.float32)
    config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, config).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    rng = np.random.default_rng(SEED)
    span = np.arange(SEQ + 1)
    ends = []
    for step in range(steps - 1):
        starts = rng.integers(0, len(stream) - SEQ - 1, BATCH)
        batch = torch.from_numpy(stream[starts[:, None] + span].astype(np.int64)).to(device)
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda" and step in (warmup - 1, steps - 2):
            torch.cuda.synchronize()  # only around the timed span: the bare loop never waits otherwise
        ends.append(time.perf_counter())
    return ends[warmup - 1:]


def main() -> None:
    args = arguments(300)
    import torch

    with scratch("ingot-bench-finetune-", args.keep) as tmp:
        inputs = prepare(tmp)
        inputs[INIT] = init_entry(inputs, tmp)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"model width {MODEL['hidden_size']}, {MODEL['layers']} layers, vocab {MODEL['vocab_size']:,}; LoRA "
              f"rank {LORA['r']} on every linear layer of the decoder; batch {BATCH} x seq {SEQ}; {args.steps} steps "
              f"per run ({args.warmup} warmup), {args.rounds} rounds; {device}, {torch.get_num_threads()} threads, "
              f"torch {torch.__version__}", flush=True)
        whole, step = alternate(
            lambda n: [("bare peft", lambda: bare(inputs, args.steps, args.warmup)),
                       ("ingot", lambda: ingot(inputs, tmp, args.steps, args.warmup, n, train_spec(args.steps)))],
            args.rounds)
        print(f"ratio ingot / bare peft time per step, whole runs: {whole['bare peft'] / whole['ingot']:.3f}x "
              f"(goal <= 1.05x)")
        if device == "cpu":  # on a GPU the bare loop's steps are not synchronized one by one
            print(f"ratio ingot / bare peft time per step, median step: {step['bare peft'] / step['ingot']:.3f}x")


if __name__ == "__main__":
    main()
