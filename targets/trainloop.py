"""The parts of the train builder that are not the loop: schedule, data, model and optimizer,
checkpoints, metrics and progress.

Reads: `tokens.<dataset>` entries (`train.bin`/`validation.bin`, flat streams of token ids
described by `tokens.json`), memory-mapped; the tokenizer entry (special ids) and an `init`
entry's `model.safetensors`. Writes: checkpoints under the build's work directory, each
`step-NNNNNN/` holding three files, one per object, each saved whole through its own
`state_dict()`:

- `model.safetensors`: the weights (a tied LM head once, as the embedding); for a LoRA step,
  `adapter_model.safetensors` in its place: the adapters only (targets/lora.py), the frozen
  base being the `init` entry's;
- `optimizer.safetensors`: `optimizer.state_dict()` flattened generically: every tensor under
  its path (`state.<param index>.<name>`, `.<i>` for the items of a list), and in the file's
  `__metadata__["optimizer"]` the rest as JSON (param_groups with lr, betas and `params`
  index lists; the Python scalars of `state`), each tensor replaced by a reference to its key;
- `state.json`: the loop's `LoopState.state_dict()` (step, tokens seen, validation losses,
  early stopping, elapsed seconds, torch's RNG states as base64).

Loading refuses, naming the checkpoint, any state that is missing, unknown or does not fit
the optimizer's parameter groups, so a run never resumes with part of its state. Safetensors
and JSON only: nothing is pickled.

Every random draw of the data is a pure function of (seed, optimizer step, micro-batch), so
a resumed run reads exactly the windows an uninterrupted one reads, with no cursor to save.
Windows start at a random token (`train_batch`), except while a teacher whose outputs are
stored teaches: then they are whole windows of the stored ones (`window_batch`), whose outputs
`StoredOutputs` reads from the teacher-outputs entry (`teacher_outputs.<teacher>~<dataset>~<len>`).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Callable

from compiler.inputs import INIT, TOKENIZER, Input, Role, of_role
from targets import BuildError, Job, StatusLine, architectures, plugins
from targets.optim import adamw  # noqa: F401 (moved to targets/optim.py; tests build AdamW from here)

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
    """Learning rate of step index `i` (0-based) for the peak `optimizer.lr` (see `scheduled`)."""
    return scheduled(spec.optimizer.lr, spec.schedule, i, total)


def scheduled(lr: float, s, i: int, total: int) -> float:
    """Learning rate of step index `i` (0-based) for a parameter group of peak `lr` under schedule
    `s`: linear warmup, then constant or cosine down to lr · min_lr_ratio, reached at the last step."""
    if i < s.warmup_steps:
        return lr * (i + 1) / (s.warmup_steps + 1)
    if s.kind == "constant":
        return lr
    progress = (i - s.warmup_steps) / max(1, total - 1 - s.warmup_steps)
    return lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ---------------------------------------------------------------- data

class TokenData:
    """The train and validation streams of every dataset a step reads, memory-mapped."""

    def __init__(self, inputs: dict[Input, Path], vocab_size: int):
        self.train, self.validation = {}, {}
        self.masks = {"train": {}, "validation": {}}  # datasets of instruction/response records only
        for name, folder in of_role(inputs, Role.TOKENS).items():
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
                    mask: bool = False, share: tuple[int, int] | None = None):
        """`batch` windows of seq_len + 1 tokens (int64), each from a dataset drawn by weight at
        a uniformly random offset; a pure function of (seed, step index, micro-batch). With
        `mask`, also the response masks of the same windows (uint8). With `share` (lo, hi), only
        rows lo..hi-1 of them are read: one process's share of a micro-batch split over several."""
        import numpy as np

        names, which, where = _draws(seed, i, micro, datasets, batch)
        plan = []
        for d, name in enumerate(names):
            rows = np.flatnonzero(which == d)
            if rows.size:
                plan.append((name, rows, (where[rows] * (len(self.train[name]) - seq_len)).astype(np.int64)))
        plan, count = _shared(plan, share, batch)
        out = _windows(self.train, plan, count, seq_len, np.int64)
        return (out, _windows(self.masks["train"], plan, count, seq_len, np.uint8)) if mask else out

    def windows(self, name: str, seq_len: int, most: int | None = None) -> int:
        """Consecutive windows of seq_len + 1 tokens the train stream of `name` is cut into, as a
        teacher-outputs entry cuts it: window w starts at token w · seq_len; at most `most`
        (`distill.windows`: the entry covers the first ones only)."""
        count = (len(self.train[name]) - 1) // seq_len
        return count if most is None else min(count, most)

    def window_batch(self, seed: int, i: int, micro: int, datasets: dict[str, float], batch: int, seq_len: int,
                     most: int | None = None, share: tuple[int, int] | None = None):
        """`batch` whole windows (int64, seq_len + 1 tokens: see `windows`), each from a dataset drawn
        by weight and a window drawn uniformly, and the (dataset, rows, window indices) of each
        dataset drawn, by which the windows' stored teacher outputs are read. A pure function of
        (seed, step index, micro-batch), from the same draws as `train_batch`: the same rows come
        from the same datasets, each at the start of the window its offset falls in. `share` as for
        `train_batch` (the picks' rows then count from the share's first row)."""
        import numpy as np

        names, which, where = _draws(seed, i, micro, datasets, batch)
        picks = []
        for d, name in enumerate(names):
            rows = np.flatnonzero(which == d)
            if rows.size:
                count = self.windows(name, seq_len, most)
                picks.append((name, rows, np.minimum((where[rows] * count).astype(np.int64), count - 1)))
        picks, count = _shared(picks, share, batch)
        plan = [(name, rows, windows * seq_len) for name, rows, windows in picks]
        return _windows(self.train, plan, count, seq_len, np.int64), picks

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


def _shared(plan: list, share: tuple[int, int] | None, batch: int) -> tuple[list, int]:
    """A batch's (dataset, rows, where) plan cut to rows lo..hi-1 of `share`, renumbered from 0,
    and the rows it has: every draw is made for the whole batch, so the processes that split it
    read exactly the windows one process would."""
    if share is None:
        return plan, batch
    lo, hi = share
    out = []
    for name, rows, where in plan:
        mine = (rows >= lo) & (rows < hi)
        if mine.any():
            out.append((name, rows[mine] - lo, where[mine]))
    return out, hi - lo


def _draws(seed: int, i: int, micro: int, datasets: dict[str, float], batch: int):
    """The random draws of micro-batch `micro` of step index `i`: the datasets' names, each row's
    dataset (drawn by weight) and a uniform number per row that places its window."""
    import numpy as np

    rng = np.random.default_rng([seed, 0, i, micro])
    names = list(datasets)
    weights = np.array([datasets[n] for n in names], dtype=np.float64)
    return names, rng.choice(len(names), size=batch, p=weights / weights.sum()), rng.random(batch)


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


class StoredOutputs:
    """A teacher-outputs entry (targets/teacher.py), memory-mapped: the teacher's log-probabilities
    at the step's temperature for the groups of every window of one dataset, read by window
    index. Its teacher.json is read as plain JSON, as TokenData reads tokens.json: compiler/entries.py
    (which types it) stays out of the train builder's code digest, so an edit there re-keys no
    training."""

    def __init__(self, folder: Path, what: str, seq_len: int, temperature: float, vocab_size: int):
        import numpy as np

        info = json.loads((folder / "teacher.json").read_text())
        self.align, self.k, self.dtype, self.ids = info["align"], info["k"], info["logprobs_dtype"], info["ids"]
        found = {k: info[k] for k in ("seq_len", "temperature")}
        wanted = {"seq_len": seq_len, "temperature": temperature}
        if self.align == "same":  # its ids and columns are the student's
            found["vocab_size"], wanted["vocab_size"] = info["vocab_size"], vocab_size
        if found != wanted or self.align == "same" and any(s["groups"] != s["windows"] * seq_len
                                                           for s in info["shards"]):
            raise BuildError(f"{what}: stored for {found}, and the student reads {wanted}; the compiler pairs them, "
                             "so the entry was made by another version of Ingot: `doit verify --repair`")
        self.seq_len, self.windows = seq_len, info["windows"]
        parts = ("offsets", "spans", "logprobs", "rest") + (("ids",) if self.ids else ())
        self.firsts = [s["first_window"] for s in info["shards"]]
        self.shards = [{part: np.load(folder / f"{s['name']}.{part}.npy", mmap_mode="r") for part in parts}
                       for s in info["shards"]]
        self.mapping = np.load(folder / "mapping.npy") if self.align == "map" else None

    def take(self, windows, out: dict, rows) -> None:
        """`align: same`: write the outputs of `windows` (indices) into rows `rows` of `out`'s
        arrays (logprobs [batch, seq_len, k], ids or None, rest [batch, seq_len])."""
        import numpy as np

        span = np.arange(self.seq_len)
        for n, arrays in enumerate(self.shards):
            first, end = self.firsts[n], self.firsts[n + 1] if n + 1 < len(self.shards) else self.windows
            inside = (windows >= first) & (windows < end)
            if not inside.any():
                continue
            at = arrays["offsets"][windows[inside] - first][:, None] + span
            for part in ("logprobs", "ids", "rest"):
                if out[part] is not None:
                    out[part][rows[inside]] = arrays[part][at]

    def groups(self, window: int) -> dict:
        """`align: uld` or `map`: the groups of one window, {spans [G, 2], logprobs [G, k], ids
        [G, k] or None, rest [G]}."""
        import bisect

        import numpy as np

        n = bisect.bisect_right(self.firsts, window) - 1
        arrays, j = self.shards[n], window - self.firsts[n]
        lo, hi = int(arrays["offsets"][j]), int(arrays["offsets"][j + 1])
        return {part: np.asarray(arrays[part][lo:hi]) if part in arrays else None
                for part in ("spans", "logprobs", "ids", "rest")}


class StoredTeacher:
    """A step teacher as the student reads it: its stored outputs, one entry per (dataset,
    window length) the student draws from while the teacher teaches."""

    def __init__(self, outputs: dict[tuple[str, int], StoredOutputs]):
        self.outputs = outputs
        self.align = next(iter(outputs.values())).align

    def targets(self, picks: list, batch: int, seq_len: int) -> dict:
        """The stored outputs of the windows `window_batch` drew: for `same`, {logprobs [batch,
        seq_len, k], ids (None for a whole distribution), rest [batch, seq_len]}; for `uld` and
        `map`, {spans (a list, per row), logprobs [G, k], ids or None, rest [G], mapping}, the
        groups of all rows in row order."""
        import numpy as np

        one = next(o for (_, n), o in self.outputs.items() if n == seq_len)
        if self.align != "same":
            by_row = {int(r): (name, int(w)) for name, rows, windows in picks for r, w in zip(rows, windows)}
            found = [self.outputs[(by_row[r][0], seq_len)].groups(by_row[r][1]) for r in range(batch)]
            return {"spans": [g["spans"] for g in found], "mapping": one.mapping,
                    **{part: np.concatenate([g[part] for g in found]) if one.ids or part != "ids" else None
                       for part in ("logprobs", "ids", "rest")}}
        out = {"logprobs": np.empty((batch, seq_len, one.k), dtype=one.dtype),
               "ids": np.empty((batch, seq_len, one.k), dtype=np.int32) if one.ids else None,
               "rest": np.empty((batch, seq_len), dtype=np.float32)}
        for name, rows, windows in picks:
            self.outputs[(name, seq_len)].take(windows, out, rows)
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
    """The float32 model and the config.json to write beside it: the `init` entry's (any
    architecture transformers builds from its own config.json, a pretrained folder's too, or a
    plug-in's) with its weights, or the model spec's with the init step's seeded weights (a
    plug-in's own, drawn under the seed the trainer set)."""
    import torch
    from safetensors.torch import load_file

    from targets import special_ids
    from targets.weights import hf_config, init_state

    if INIT in job.inputs:  # every weights entry holds one model.safetensors (a pretrained one joins its shards)
        folder = job.inputs[INIT]
        config = json.loads((folder / "config.json").read_text())
        if architectures.is_plugin(config):
            model, config = architectures.load(job.root, folder, f"the weights of '{job.spec.init}'")
            return model.to(device).train(), config
        from transformers import AutoConfig, AutoModelForCausalLM

        config.pop("torch_dtype", None)  # transformers 4's name of `dtype`
        config["dtype"] = "float32"      # what training writes, whatever the weights came in
        built = AutoConfig.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
        model = AutoModelForCausalLM.from_config(built, dtype=torch.float32)
        load_weights(model, load_file(str(folder / "model.safetensors")), f"the weights of '{job.spec.init}'")
    elif plugins.is_plugin(job.models["model"].architecture):
        spec = job.models["model"]
        config = architectures.config_of(spec, special_ids(job.inputs[TOKENIZER]))
        model = architectures.build_module(job.root, config, spec.expect_params)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        spec = job.models["model"]
        ids = special_ids(job.inputs[TOKENIZER])
        config = hf_config(spec, ids, "float32")
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
        state = init_state(spec, ids, job.spec.seed)
        load_weights(model, {k: torch.from_numpy(v) for k, v in state.items()}, f"model '{spec.name}'")
    return model.to(device).train(), config


# ---------------------------------------------------------------- checkpoints

def weights(model) -> dict:
    """The model's tensors as safetensors stores them: a tied LM head is the embedding, once."""
    return weights_of_state(model, model.state_dict())


def load_weights(model, state: dict, what: str) -> None:
    import torch

    state = {k: v.to(torch.float32) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = dropped(model)
    if set(missing) - allowed or unexpected:
        raise BuildError(f"{what} does not fit the model: missing {sorted(set(missing) - allowed)}, "
                         f"unexpected {sorted(unexpected)}")


@dataclass(frozen=True)
class Trained:
    """What a checkpoint keeps of the model: every weight, or (LoRA) the adapters only."""

    file: str          # its file in the checkpoint folder
    state: Callable    # model -> {name: tensor}, as the file stores them
    load: Callable     # (model, that dict, what) -> None, in place; a misfit is a BuildError naming `what`
    # for a model trained in several processes, whose whole state is gathered to one as a dict:
    of_state: Callable   # (model, its full state dict) -> {name: tensor}, as the file stores them
    to_state: Callable   # (model, that dict) -> the entries of the full state dict it sets


def _tied(model) -> bool:
    return bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))


def dropped(model) -> set[str]:
    """State-dict names a checkpoint leaves out: a tied LM head of transformers' (its embedding), or
    any tensor a plug-in holds under a second name (kept under its first)."""
    return {"lm_head.weight"} if _tied(model) else architectures.aliases(model)


def weights_of_state(model, state: dict) -> dict:
    """`weights` of a model whose full state dict is `state`."""
    leave = dropped(model)
    return {k: v.detach().contiguous() for k, v in state.items() if k not in leave}


FULL = Trained("model.safetensors", weights, load_weights, weights_of_state, lambda model, state: dict(state))

OPTIMIZER_JSON = "optimizer"  # the `__metadata__` entry of optimizer.safetensors that holds its JSON part
WHOLE = ("a checkpoint must hold the whole state to resume exactly: delete it to resume from the one "
         "before, or from the start")


@dataclass
class EarlyStopping:
    best: float | None = None  # the validation loss later evaluations must beat by min_delta
    bad_evals: int = 0         # evaluations in a row since then that did not


@dataclass
class LoopState:
    """What the loop carries from one step to the next, saved whole as a checkpoint's state.json.
    The data cursor and the schedule's position are `step`: windows and learning rates are
    functions of the step index."""

    step: int = 0                    # optimizer steps done
    total_steps: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0           # seconds of training behind the weights, over every attempt
    val_loss: float | None = None    # at `step`, when it was evaluated there
    best_val_loss: float | None = None
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    stopped_early: bool = False
    teacher_forwards: int = 0        # forward passes of live teachers (stored outputs count none)

    def state_dict(self) -> dict:
        """The fields, and torch's RNG states as they are now (the next draws depend on them)."""
        return asdict(self) | {"rng": rng_state()}

    def load_state_dict(self, d: dict, source: str = "the loop state") -> None:
        """Take every field and the RNG states from `d`; a key missing or unknown is a
        BuildError naming `source`, never a default."""
        _same_keys(d, [f.name for f in fields(self)] + ["rng"], source)
        _same_keys(d["rng"], ["torch", "cuda"], source, "rng.")
        loaded = _from_dict(LoopState, {k: v for k, v in d.items() if k != "rng"}, source)
        for f in fields(self):
            setattr(self, f.name, getattr(loaded, f.name))
        set_rng_state(d["rng"])


def _from_dict(cls, d: dict, source: str, prefix: str = ""):
    """An instance of dataclass `cls` from exactly its fields' keys (nested dataclasses too)."""
    _same_keys(d, [f.name for f in fields(cls)], source, prefix)
    return cls(**{f.name: _from_dict(f.default_factory, d[f.name], source, f"{prefix}{f.name}.")
                  if is_dataclass(f.default_factory) else d[f.name] for f in fields(cls)})


def _same_keys(d, expected: list[str], source: str, prefix: str = "") -> None:
    if not isinstance(d, dict):
        where = repr(prefix.rstrip(".")) if prefix else "its top level"
        raise BuildError(f"{source}: {where} is a {type(d).__name__} where a mapping belongs; {WHOLE}")
    missing = [prefix + k for k in expected if k not in d]
    unknown = sorted(prefix + str(k) for k in d if k not in expected)
    problems = ([f"lacks {', '.join(map(repr, missing))}"] if missing else []) + (
        [f"holds unknown {', '.join(map(repr, unknown))}"] if unknown else [])
    if problems:
        raise BuildError(f"{source} {' and '.join(problems)}; {WHOLE}")


def _json(text: str, source: str):
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BuildError(f"{source} is not valid JSON ({exc}); {WHOLE}") from None


def rng_state() -> dict:
    """torch's RNG states, the CPU's and each CUDA device's, as base64 text (they are bytes)."""
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": _b64(torch.get_rng_state()), "cuda": [_b64(s) for s in cuda]}


def set_rng_state(rng: dict) -> None:
    import torch

    torch.set_rng_state(_unb64(rng["torch"]))
    if rng["cuda"] and torch.cuda.is_available():  # resumed on a CPU, a GPU run's draws are the CPU's
        torch.cuda.set_rng_state_all([_unb64(s) for s in rng["cuda"]])


def _b64(t) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str):
    import torch

    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)


def flatten_optimizer(state_dict: dict) -> tuple[dict, str]:
    """(tensors, JSON text) of an `optimizer.state_dict()`, whatever the optimizer: each tensor
    under its path (`state.<param index>.<name>`, `param_groups.<group>.<name>`, `.<i>` for
    the items of a list) and, in the JSON, `{"tensor": path}` in its place; a tuple (betas)
    as `{"tuple": [...]}`, so that it loads as a tuple. JSON keeps ints, floats and bools apart."""
    import torch

    tensors = {}

    def encode(value, path: str):
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().contiguous()
            return {"tensor": path}
        if isinstance(value, (list, tuple)):
            items = [encode(v, f"{path}.{i}") for i, v in enumerate(value)]
            return {"tuple": items} if isinstance(value, tuple) else items
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise BuildError(f"optimizer state {path} is a {type(value).__name__}, which a checkpoint cannot hold: "
                         f"it holds tensors, numbers, booleans, strings, None and lists or tuples of them")

    extra = sorted(set(state_dict) - {"state", "param_groups"})
    if extra:
        raise BuildError(f"the optimizer's state_dict() holds {extra} beside state and param_groups, which a "
                         f"checkpoint does not save: save them, or use an optimizer without them")
    tree = {"state": {str(i): {k: encode(v, f"state.{i}.{k}") for k, v in s.items()}
                      for i, s in state_dict["state"].items()},
            "param_groups": [{k: encode(v, f"param_groups.{g}.{k}") for k, v in group.items()}
                             for g, group in enumerate(state_dict["param_groups"])]}
    return tensors, json.dumps(tree)


def unflatten_optimizer(tensors: dict, text: str, source: str) -> dict:
    """The state_dict that flatten_optimizer took apart; a tensor named but absent, or present
    but not named, is a BuildError naming `source`."""
    used, absent = set(), []

    def decode(value):
        if isinstance(value, list):
            return [decode(v) for v in value]
        if isinstance(value, dict) and set(value) == {"tuple"}:
            return tuple(decode(v) for v in value["tuple"])
        if isinstance(value, dict) and set(value) == {"tensor"}:
            used.add(value["tensor"])
            if value["tensor"] not in tensors:
                absent.append(value["tensor"])
            return tensors.get(value["tensor"])
        if isinstance(value, dict):
            raise BuildError(f"{source} holds {json.dumps(value)}, neither a tensor nor a tuple; {WHOLE}")
        return value

    tree = _json(text, source)
    _same_keys(tree, ["state", "param_groups"], source)
    # parameters by index (one process's optimizer.state_dict()) or by name (a full state dict
    # gathered from several processes)
    out = {"state": {int(i) if i.isdigit() else i: {k: decode(v) for k, v in s.items()}
                     for i, s in tree["state"].items()},
           "param_groups": [{k: decode(v) for k, v in group.items()} for group in tree["param_groups"]]}
    if absent:
        raise BuildError(f"{source} lacks {', '.join(map(repr, absent))}, which its optimizer state names; {WHOLE}")
    if set(tensors) - used:
        raise BuildError(f"{source} holds tensors its optimizer state does not name: "
                         f"{', '.join(map(repr, sorted(set(tensors) - used)))}; {WHOLE}")
    return out


def check_optimizer_fits(saved: dict, expected: dict, source: str) -> None:
    """`saved` is a whole state of the optimizer whose state dict is `expected`: its parameter
    groups, each with the same hyperparameter names and parameters, and state for none but those
    parameters."""
    ours, theirs = expected["param_groups"], saved["param_groups"]
    if len(theirs) != len(ours):
        raise BuildError(f"{source} holds {len(theirs)} parameter group{'s' * (len(theirs) != 1)}, the optimizer "
                         f"{len(ours)}; {WHOLE}")
    for g, (a, b) in enumerate(zip(theirs, ours)):
        _same_keys(a, list(b), source, f"param_groups.{g}.")
        if len(a["params"]) != len(b["params"]):
            raise BuildError(f"{source}: parameter group {g} holds {len(a['params'])} parameters, the optimizer's "
                             f"{len(b['params'])}; {WHOLE}")
        if a["params"] != b["params"]:
            raise BuildError(f"{source}: parameter group {g} numbers its parameters {a['params']}, the "
                             f"optimizer {b['params']}; {WHOLE}")
    stray = sorted(set(saved["state"]) - {i for b in ours for i in b["params"]})
    if stray:
        raise BuildError(f"{source} holds state for parameters {stray}, which the optimizer does not have; {WHOLE}")


def save_checkpoint(root: Path, model, optimizer, loop: LoopState, trained: Trained = FULL) -> Path:
    """Write checkpoint `loop.step` of the model (what `trained` keeps), its optimizer and loop."""
    return write_checkpoint(root, trained.file, trained.state(model), optimizer.state_dict(), loop)


def write_checkpoint(root: Path, file: str, tensors: dict, optimizer_state: dict, loop: LoopState) -> Path:
    """Write checkpoint `loop.step` (the model's `tensors` as `file`, the optimizer's state dict,
    the loop's state) into a temporary folder, then rename it into place: a folder named
    step-NNNNNN is always complete."""
    from safetensors.torch import save_file

    final = root / f"step-{loop.step:06d}"
    tmp = root / f".tmp-step-{loop.step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / file), metadata={"format": "pt"})
    flat, text = flatten_optimizer(optimizer_state)
    # the JSON part rides in the header of the tensors' own file, not in a sidecar: the tensors
    # and the structure that names them are written, renamed and copied as one, so they can
    # never come from two different saves
    # one metadata entry: safetensors writes several in hash-map order, which differs between
    # processes, and a checkpoint should be the same bytes for the same state
    save_file(flat, str(tmp / "optimizer.safetensors"), metadata={OPTIMIZER_JSON: text})
    (tmp / "state.json").write_text(json.dumps(loop.state_dict(), indent=2) + "\n")
    os.rename(tmp, final)
    return final


def load_checkpoint(path: Path, model, optimizer, loop: LoopState, trained: Trained = FULL) -> None:
    """Restore the weights (what `trained` keeps), the optimizer's whole state and the loop's (RNG
    included) from checkpoint `path`; state that is missing, unknown or does not fit is a BuildError."""
    tensors, saved, state = read_checkpoint(path, trained.file)
    trained.load(model, tensors, f"checkpoint {path}")
    source = f"checkpoint {path}: optimizer.safetensors"
    check_optimizer_fits(saved, optimizer.state_dict(), source)
    try:  # torch moves each state tensor to its parameter's device (and dtype, `step` aside)
        optimizer.load_state_dict(saved)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise BuildError(f"{source} does not fit the optimizer ({exc}); {WHOLE}") from None
    loop.load_state_dict(state, f"checkpoint {path}: state.json")


def read_checkpoint(path: Path, file: str) -> tuple[dict, dict, dict]:
    """The model tensors (`file`), the optimizer's state dict and the loop's state of checkpoint
    `path`; a file missing or not as written is a BuildError."""
    from safetensors.torch import load_file

    if not (path / file).is_file():
        raise BuildError(f"checkpoint {path} has no {file}; {WHOLE}")
    model = load_file(str(path / file))
    source = f"checkpoint {path}: optimizer.safetensors"
    tensors, meta = _tensors(path / "optimizer.safetensors")
    if OPTIMIZER_JSON not in meta:
        raise BuildError(f"{source} has no '{OPTIMIZER_JSON}' entry in its metadata; {WHOLE}")
    saved = unflatten_optimizer(tensors, meta[OPTIMIZER_JSON], source)
    return model, saved, _json((path / "state.json").read_text(), f"checkpoint {path}: state.json")


def _tensors(path: Path) -> tuple[dict, dict]:
    """A safetensors file's tensors (on the CPU) and its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


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
