"""The parts of the train builder that are not the loop: schedule, data, model and optimizer,
checkpoints, metrics and progress.

Reads: `tokens.<dataset>` entries (`train.bin`/`validation.bin`, flat streams of token ids
described by `tokens.json`), memory-mapped; the tokenizer entry (special ids) and an `init`
entry's `model.safetensors`. Writes: checkpoints under the build's work
directory, each `step-NNNNNN/` holding `model.safetensors`, `optimizer.safetensors` (AdamW
moments and step per parameter, torch RNG states) and `state.json` (the loop's counters).
Safetensors only: nothing is pickled.

Every random draw of the data is a pure function of (seed, optimizer step, micro-batch), so
a resumed run reads exactly the windows an uninterrupted one reads, with no cursor to save.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from targets import BuildError, Job, StatusLine

CHECKPOINT = re.compile(r"^step-(\d{6,})$")
IGNORE = -100  # a label cross-entropy skips (torch's ignore_index)


# ---------------------------------------------------------------- schedule

@dataclass(frozen=True)
class Segment:
    """A run of optimizer steps with one dataset mixture and length (a stage) or one set of
    teachers (a phase)."""

    name: str | None
    start: int    # first step index (0-based) of the segment
    end: int      # one past its last step index


def segments(items, total: int, label: str) -> list[Segment]:
    """Consecutive segments of stages or phases; one unnamed segment when there are none."""
    if not items:
        return [Segment(None, 0, total)]
    out, start = [], 0
    for i, item in enumerate(items):
        out.append(Segment(item.name or f"{label} {i + 1}", start, start + item.steps))
        start += item.steps
    return out


def segment_at(segs: list[Segment], i: int) -> int:
    """Index of the segment that step index `i` falls in."""
    for n, seg in enumerate(segs):
        if i < seg.end:
            return n
    return len(segs) - 1


def lr_at(spec, i: int, total: int) -> float:
    """Learning rate of step index `i` (0-based): linear warmup, then constant or cosine down to
    lr · min_lr_ratio, reached at the last step."""
    lr, s = spec.optimizer.lr, spec.schedule
    if i < s.warmup_steps:
        return lr * (i + 1) / (s.warmup_steps + 1)
    if s.kind == "constant":
        return lr
    progress = (i - s.warmup_steps) / max(1, total - 1 - s.warmup_steps)
    return lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ---------------------------------------------------------------- data

class TokenData:
    """The train and validation streams of every dataset a step reads, memory-mapped."""

    def __init__(self, inputs: dict[str, Path], vocab_size: int):
        self.train, self.validation = {}, {}
        self.masks = {"train": {}, "validation": {}}  # datasets of instruction/response records only
        for field, folder in inputs.items():
            if not field.startswith("tokens."):
                continue
            name = field.removeprefix("tokens.")
            meta = json.loads((folder / "tokens.json").read_text())
            if meta["vocab_size"] > vocab_size:
                raise BuildError(f"dataset '{name}' was tokenized with a vocabulary of {meta['vocab_size']:,} "
                                 f"tokens, more than the model's {vocab_size:,} embedding rows")
            for split, table in (("train", self.train), ("validation", self.validation)):
                table[name] = _stream(folder / f"{split}.bin", meta["dtype"])
                if meta.get("mask"):
                    # the mask lines up with the ids, so a window reads both at the same positions
                    self.masks[split][name] = _stream(folder / f"{split}.mask.bin", "uint8")

    def check(self, datasets: dict[str, float], seq_len: int, split: str, where: str) -> None:
        """Every dataset of a mixture holds at least one window of seq_len + 1 tokens."""
        table = self.train if split == "train" else self.validation
        for name in datasets:
            if len(table[name]) < seq_len + 1:
                fix = "raise the dataset's split.validation" if split == "validation" else "add documents"
                raise BuildError(f"dataset '{name}' has {len(table[name]):,} {split} tokens, fewer than one "
                                 f"window of seq_len + 1 = {seq_len + 1:,} tokens, needed for {where}: lower "
                                 f"seq_len or {fix}")

    def train_batch(self, seed: int, i: int, micro: int, datasets: dict[str, float], batch: int, seq_len: int,
                    mask: bool = False):
        """`batch` windows of seq_len + 1 tokens (int64), each from a dataset drawn by weight at
        a uniformly random offset; a pure function of (seed, step index, micro-batch). With
        `mask`, also the response masks of the same windows (uint8)."""
        import numpy as np

        rng = np.random.default_rng([seed, 0, i, micro])
        names = list(datasets)
        weights = np.array([datasets[n] for n in names], dtype=np.float64)
        which = rng.choice(len(names), size=batch, p=weights / weights.sum())
        where = rng.random(batch)
        plan = []
        for d, name in enumerate(names):
            rows = np.flatnonzero(which == d)
            if rows.size:
                plan.append((name, rows, (where[rows] * (len(self.train[name]) - seq_len)).astype(np.int64)))
        out = _windows(self.train, plan, batch, seq_len, np.int64)
        return (out, _windows(self.masks["train"], plan, batch, seq_len, np.uint8)) if mask else out

    def validation_batches(self, datasets: dict[str, float], batches: int, batch: int, seq_len: int,
                           mask: bool = False) -> list:
        """The same `batches` batches every time: windows spread evenly over each dataset's
        validation stream, datasets sharing the windows by weight. With `mask`, each batch is
        a (windows, masks) pair."""
        import numpy as np

        count = batches * batch
        names = list(datasets)
        cum = np.cumsum([datasets[n] for n in names], dtype=np.float64)
        owner = np.searchsorted(cum / cum[-1], (np.arange(count) + 0.5) / count)
        plan = []
        for d, name in enumerate(names):
            rows = np.flatnonzero(owner == d)
            if rows.size:
                plan.append((name, rows, np.linspace(0, len(self.validation[name]) - seq_len - 1,
                                                     rows.size).astype(np.int64)))
        out = _windows(self.validation, plan, count, seq_len, np.int64)
        cut = [slice(b * batch, (b + 1) * batch) for b in range(batches)]
        if not mask:
            return [out[c] for c in cut]
        masks = _windows(self.masks["validation"], plan, count, seq_len, np.uint8)
        return [(out[c], masks[c]) for c in cut]


def _stream(path: Path, dtype: str):
    import numpy as np

    return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)


def _windows(table: dict, plan: list, count: int, seq_len: int, dtype):
    """Rows of seq_len + 1 values of `table[name]` from each (name, rows, starts) of `plan`."""
    import numpy as np

    out = np.empty((count, seq_len + 1), dtype=dtype)
    span = np.arange(seq_len + 1)
    for name, rows, starts in plan:
        out[rows] = table[name][starts[:, None] + span]
    return out


def inputs_and_labels(ids, mask=None):
    """(inputs, labels) of windows of seq_len + 1 ids: labels are the next tokens, IGNORE where
    the mask says the token is not part of a response (supervised fine-tuning)."""
    x, y = ids[:, :-1], ids[:, 1:]
    if mask is not None:
        y = y.copy()
        y[mask[:, 1:] == 0] = IGNORE
    return x, y


# ---------------------------------------------------------------- model and optimizer

def device_for(choice: str):
    """The torch device of the spec's `device`: `auto` is CUDA when torch sees one."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise BuildError("device cuda was asked for, but torch sees no CUDA device: use device auto or cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def build_model(job: Job, device):
    """A Llama model with the init step's seeded weights, or the `init` entry's; and its config."""
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from targets import special_ids
    from targets.weights import hf_config, init_state

    spec = job.models["model"]
    ids = special_ids(job.inputs["tokenizer"])
    config = hf_config(spec, ids, "float32")
    model = LlamaForCausalLM(LlamaConfig(**config))
    if "init" in job.inputs:
        saved = load_file(str(job.inputs["init"] / "model.safetensors"))
        load_weights(model, saved, f"the weights of '{job.spec.init}'")
    else:
        state = init_state(spec, ids, job.spec.seed)
        load_weights(model, {k: torch.from_numpy(v) for k, v in state.items()}, f"model '{spec.name}'")
    return model.to(device).train(), config


def adamw(model, o):
    """AdamW with weight decay on the matrices only: not on norms, and not on the embedding."""
    import torch

    decay, other = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed_tokens" not in name else other).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)


# ---------------------------------------------------------------- checkpoints

def weights(model) -> dict:
    """The model's tensors as safetensors stores them: a tied LM head is the embedding, once."""
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach().contiguous() for k, v in state.items()}


def load_weights(model, state: dict, what: str) -> None:
    import torch

    state = {k: v.to(torch.float32) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise BuildError(f"{what} does not fit the model: missing {sorted(set(missing) - allowed)}, "
                         f"unexpected {sorted(unexpected)}")


def save_checkpoint(root: Path, step: int, model, optimizer, state: dict) -> Path:
    """Write checkpoint `step` into a temporary folder, then rename it into place: a folder
    named step-NNNNNN is always complete."""
    import torch
    from safetensors.torch import save_file

    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    opt = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        opt.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    for name, p in model.named_parameters():
        for k, v in optimizer.state.get(p, {}).items():
            opt[f"{name}.{k}"] = v.detach().contiguous()
    save_file(opt, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    os.rename(tmp, final)
    return final


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore weights, AdamW state and RNG from a checkpoint; return its state.json."""
    import torch
    from safetensors.torch import load_file

    load_weights(model, load_file(str(path / "model.safetensors")), f"checkpoint {path}")
    opt = load_file(str(path / "optimizer.safetensors"))
    for name, p in model.named_parameters():
        moments = {k: opt[f"{name}.{k}"] for k in ("step", "exp_avg", "exp_avg_sq") if f"{name}.{k}" in opt}
        if moments:
            optimizer.state[p] = {k: v.to(p.device) if k != "step" else v for k, v in moments.items()}
    torch.set_rng_state(opt["rng.torch"])
    cuda = [opt[k] for k in sorted(opt) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return json.loads((path / "state.json").read_text())


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if CHECKPOINT.match(p.name) and (p / "state.json").is_file()),
                  key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def clear_partial(root: Path) -> None:
    """Remove checkpoint folders a killed build left half-written or half-deleted."""
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def kept(root: Path, keep: int) -> list[Path]:
    """The last `keep` checkpoints plus the best by validation loss (among those evaluated)."""
    found = checkpoints(root)
    keep_set = set(found[-keep:])
    scored = [(json.loads((p / "state.json").read_text()).get("val_loss"), p) for p in found]
    scored = [(v, p) for v, p in scored if v is not None]
    if scored:
        keep_set.add(min(scored, key=lambda vp: vp[0])[1])
    return [p for p in found if p in keep_set]


def prune(root: Path, keep: int) -> None:
    for p in set(checkpoints(root)) - set(kept(root, keep)):
        # renamed first, so a kill halfway through the delete leaves no broken step-NNNNNN
        doomed = root / f".tmp-drop-{p.name}"
        os.rename(p, doomed)
        shutil.rmtree(doomed)


# ---------------------------------------------------------------- metrics and progress

def truncate_metrics(path: Path, step: int) -> None:
    """Keep the lines of steps up to `step` (those the resumed checkpoint has seen)."""
    if not path.exists():
        return
    lines = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                lines.append(line)
        except ValueError:  # the line a kill cut short
            break
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


class Progress(StatusLine):
    """Step, loss, learning rate, tokens/s and ETA of a training run on one status line."""

    def __init__(self, total: int, start: int):
        super().__init__()
        self.total, self.start = total, start

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        eta = (time.perf_counter() - self.t0) / max(1, step - self.start) * (self.total - step)
        self.show(f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s  "
                  f"ETA {_clock(eta)}", final=step >= self.total)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
