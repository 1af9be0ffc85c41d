"""What crosses the store boundary, typed once: an entry's `manifest.json`, and the files and
metrics one step reads of another's entry.

Writes: `manifest.json` (`write`, the runner's one writer: sorted keys, indent 2, the layout
of every earlier entry) and an evaluate entry's `metrics.json` (`EvaluationResults.to_json`).
Reads: `manifest.json` (`read` and `load`), an evaluate entry's `metrics.json`
(`read_evaluation`), a tokens entry's `tokens.json` (`read_tokens_info`), a teacher-outputs
entry's `teacher.json` (`read_teacher_info`) and the rows of a train
entry's `metrics.jsonl` the report shows (`read_train_rows`), as frozen pydantic models. A file that does not
match its type is an `EntryError` naming the file and every field that is missing, unknown or
of another type, so a writer that renames a field fails the reader's build (and its tests)
instead of handing it a default.

A manifest's `metrics` are the builder's own (a dict); those that other steps read are typed
here, and a reader asks for its view (`TrainEntry`, `GgufEntry`, `ExportEntry`, `TokensEntry`)
to get them as attributes, checked as the file is read. They are not checked when the runner
writes them: a stand-in builder (as tests write) may return anything its readers never see.
The keyed spec stays a dict: it is the spec of any kind, as the compiler keyed it.

Stdlib and pydantic only (never torch): builders import it, and so do the compiler and runner.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

MANIFEST = "manifest.json"
TOKENS_INFO = "tokens.json"   # of a tokens entry
TEACHER_INFO = "teacher.json"  # of a teacher-outputs entry
TRAIN_ROWS = "metrics.jsonl"  # of a train entry
EVALUATION = "metrics.json"   # of an evaluate entry

M = TypeVar("M")
D = TypeVar("D", bound="_Data")
B = TypeVar("B", bound=BaseModel)
E = TypeVar("E", bound="EntryManifest")


class EntryError(ValueError):
    """A file of a store entry that is not what its readers expect, or a manifest the runner
    was about to write that is not."""


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- the manifest


class Code(_Data):
    modules: dict[str, str]
    """Project module -> digest of its normalized syntax tree."""
    libraries: dict[str, str | None]
    """Tracked distribution -> its installed version (None: not installed)."""


class InputRef(_Data):
    task: str
    """The producing step."""
    key: str
    """Its entry's key."""
    outputs: str
    """The digest of its entry's output files: what this entry's key was computed from."""


class OutputFile(_Data):
    size: int
    xxh3_128: str


class Environment(_Data):
    """The machine and software an entry was built on. Every field is optional: an older runner
    recorded fewer, and `gpu` is only asked of torch where the builder imported it. A field
    that was not recorded is absent from the file and from `recorded`; None means recorded as
    absent (not installed, no GPU)."""

    python: str | None = None
    platform: str | None = None
    machine: str | None = None
    cpu: str | None = None
    cpus: int | None = None
    ram_bytes: int | None = None
    torch: str | None = None
    transformers: str | None = None
    tokenizers: str | None = None
    gguf: str | None = None
    llama_cpp_python: str | None = None
    gpu: str | None = None

    def recorded(self, name: str) -> bool:
        return name in self.model_fields_set


class Timings(_Data):
    started: float
    """Unix time the builder was started."""
    finished: float
    seconds: float
    """Build time, rounded to milliseconds."""


class EntryManifest(_Data, Generic[M]):
    """An entry's manifest.json. `EntryManifest` alone leaves `metrics` the builder's dict; a
    view such as `TrainEntry` types them."""

    key: str
    base: str
    """Digest of the step's own part of the key (kind, code, device, spec, sources)."""
    task: str
    kind: str
    builder: str
    """The module under targets/ that built it."""
    profile: str | None
    code: Code
    device: str | None
    spec: dict[str, Any]
    """The keyed spec, as the compiler keyed it (any kind's)."""
    inputs: dict[str, InputRef]
    sources: dict[str, str]
    """Files read outside the store: label -> xxh3 digest."""
    outputs: dict[str, OutputFile]
    metrics: M
    environment: Environment
    timings: Timings

    def to_json(self) -> str:
        """The file's text: sorted keys, indent 2 (as every entry has it); fields an older
        runner did not record stay absent."""
        return json.dumps(self.model_dump(exclude_unset=True), indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------- metrics other steps read


class TeacherSummary(_Data):
    """A distillation teacher as the student read it (a train entry's metrics `teachers`)."""

    align: Literal["same", "uld", "map"]
    stored: bool
    """Read from teacher-outputs entries (a step teacher); False: run live beside the student."""
    top_k: int | Literal["all"] | None
    """What the stored entries keep; None for a live teacher (its whole distribution)."""
    windows: int | None
    """Stored windows, over the datasets and lengths it teaches; None for a live teacher."""
    coverage: float
    """Share of the student's predicted tokens in the stored windows that an aligned group holds
    (1.0 for `same`)."""
    mapped: float | None
    """`map`: share of the teacher's vocabulary that maps onto student ids; else None."""


class TrainMetrics(_Data):
    """What the train builder returns; the report reads the run's figures from it."""

    parameters: int
    steps: int
    total_steps: int
    stopped_early: bool
    final_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    tokens_seen: int
    seconds: float
    """Training time of this run and the runs it resumed (the loop's own clock)."""
    resumed_from: int | None
    """The step a killed build was resumed from; None when it ran from the start."""
    device: str
    dtype: str
    phases: list[dict[str, Any]]
    stages: list[dict[str, Any]]
    checkpoints: list[str]
    teacher_forwards: int = 0
    """Forward passes of live teachers (`path:`, `hub:`) this step ran, over every resumed run; a
    step teacher's outputs are read from its teacher-outputs entry and count nothing."""
    teachers: dict[str, TeacherSummary] = {}
    """Per distillation teacher: how it met the student's tokens."""


class TrainRow(BaseModel):
    """One line of a train entry's metrics.jsonl (an optimizer step): the fields the report reads.
    The train builder writes more (ce, kd, grad_norm), which this view leaves unread."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    step: int
    phase: str | None
    stage: str | None
    loss: float
    val_loss: float | None
    """Validation loss, at the steps that evaluated; None elsewhere."""
    lr: float
    tokens: int
    tokens_per_s: float
    wall_time: float
    """Training seconds up to the end of this step, over every run of a resumed build."""


class GgufFile(_Data):
    """One GGUF file as the gguf builder read it back; evaluate and the report read these."""

    file: str
    bytes: int
    tensor_bytes: int
    parameters: int
    bits_per_weight: float
    file_type: str
    histogram: dict[str, int]
    """Tensor type -> number of tensors of it."""
    tensors: dict[str, str]
    """Tensor name -> its type."""
    seconds: float


class GgufMetrics(_Data):
    files: dict[str, GgufFile]
    """GGUF type (f16, q8_0, ...) -> its file."""


class ExportMetrics(_Data):
    """What the Hugging Face export builder returns."""

    tensors: int
    weights_bytes: int


class SplitCounts(_Data):
    documents: int
    tokens: int


class TokensInfo(_Data):
    """A tokens entry's tokens.json, which is also its manifest's metrics."""

    dtype: str
    """numpy dtype of the little-endian ids: uint16 or uint32."""
    eos_id: int
    bos_id: int | None
    pad_id: int | None
    vocab_size: int
    splits: dict[str, SplitCounts]
    mask: bool = False
    """Each split has a `<split>.mask.bin` (instruction/response data); written only when true."""


class TeacherShard(_Data):
    """One shard of a teacher-outputs entry: consecutive windows, in files named after it."""

    name: str
    """The files' common prefix: `shard-00000` (.offsets.npy, .spans.npy, .logprobs.npy, .rest.npy, .ids.npy)."""
    first_window: int
    windows: int
    groups: int


class TeacherOutputsInfo(_Data):
    """A teacher-outputs entry's teacher.json, which is also its manifest's metrics: how the
    teacher's predictions over the student's train split are laid out (targets/teacher.py)."""

    format: int
    """1: groups with student spans (a, b), k log-probabilities (and ids) each, and the rest's log-mass."""
    align: Literal["same", "uld", "map"]
    top_k: int | Literal["all"]
    """As the spec asked; `k` is what was stored."""
    k: int
    """Log-probabilities per group: top_k, or the vocabulary for `all` (or a top_k at least it)."""
    ids: bool
    """Each shard has `.ids.npy` (int32, the student ids of the log-probabilities; -1 for a
    teacher id `map` carries to none); without, the columns are the vocabulary in id order
    (`all` with `same`), or sorted values without ids (`uld`)."""
    logprobs_dtype: Literal["float16", "float32"]
    temperature: float
    """The log-probabilities are of softmax(logits / temperature)."""
    seq_len: int
    """Window length L: window w is the train tokens w·L … w·L + L, a group's (a, b) its tokens
    a..b, 1 <= a <= b <= L."""
    tokens: int
    """Train tokens of the stream the windows were cut from."""
    windows: int
    """(tokens - 1) // seq_len."""
    groups: int
    vocab_size: int
    """Width of the teacher's distribution (its logits)."""
    coverage: float
    """Share of the student's predicted tokens some group holds (1.0 for `same`)."""
    mapped: float | None = None
    """`map`: share of the teacher's ids that map onto a student id of the same bytes; else None."""
    forwards: int
    """Teacher forward passes that made the entry."""
    shards: list[TeacherShard]


TrainEntry = EntryManifest[TrainMetrics]
GgufEntry = EntryManifest[GgufMetrics]
ExportEntry = EntryManifest[GgufMetrics | ExportMetrics]  # either format, as a report lists exports
TokensEntry = EntryManifest[TokensInfo]
TeacherOutputsEntry = EntryManifest[TeacherOutputsInfo]


# ---------------------------------------------------------------- an evaluate entry's metrics.json


class EvaluationData(_Data):
    dataset: str
    split: str
    seq_len: int
    windows: int
    tokens: int
    """Tokens predicted: windows x (seq_len - 1)."""


class CheckpointScore(_Data):
    loss: float
    perplexity: float
    parameters: int
    weights_bytes: int


class GgufScore(_Data):
    file: str
    bytes: int
    bits_per_weight: float
    loss: float
    perplexity: float
    perplexity_ratio: float
    """This file's perplexity over the checkpoint's."""
    kld_mean: float
    """Mean over predicted tokens of KL(checkpoint || this file) of the next-token distributions,
    in nats: what llama-perplexity --kl-divergence calls "Mean KLD"."""
    kld_median: float
    kld_p99: float
    """99th percentile of the per-token KL divergence (linear interpolation, as llama.cpp's)."""
    kld_max: float
    top1_same: int
    """Predicted tokens where this file's most likely next token is the checkpoint's."""
    top1_agreement: float
    """top1_same over the tokens predicted: llama-perplexity's "Same top p"."""


class PromptText(_Data):
    name: str
    text: str


class GenerationRun(_Data):
    prompt: str
    input_tokens: int
    output_tokens: int
    latency_s: float
    first_token_s: float
    tokens_per_s: float
    text: str


class Engine(_Data):
    label: str
    weights_bytes: int
    rss_delta_bytes: int
    load_seconds: float
    runs: list[GenerationRun]
    avg_latency_s: float
    avg_tokens_per_s: float
    peak_tokens_per_s: float
    output_tokens: int


class Generation(_Data):
    max_new_tokens: int
    prompts: list[PromptText]
    engines: dict[str, Engine]
    """`torch`, then `gguf-TYPE` per GGUF file."""


class EvaluationResults(_Data):
    """An evaluate entry's metrics.json, which the report reads."""

    data: EvaluationData
    checkpoint: CheckpointScore
    gguf: dict[str, GgufScore]
    generation: Generation

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2) + "\n"


# ---------------------------------------------------------------- the one writer and the readers


def manifest(**fields: Any) -> EntryManifest:
    """The manifest the runner commits, checked field by field (its metrics are the builder's)."""
    return _checked(EntryManifest, fields, "its manifest", _WRITER_FIX)


def write(folder: Path, manifest: EntryManifest) -> Path:
    """Write `folder`/manifest.json and fsync it (the store writes it last, then renames the folder)."""
    path = Path(folder) / MANIFEST
    with open(path, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    return path


def read(folder: Path | str, shape: type[E] = EntryManifest) -> E | None:  # type: ignore[assignment]
    """The manifest of the entry in `folder` as `shape` (EntryManifest, or a view that types its
    metrics), or None when there is none. One that does not parse as `shape` is an EntryError."""
    path = Path(folder) / MANIFEST
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    try:  # once, as the shape asked for; the error says whose fault a mismatch is
        return shape.model_validate_json(text)
    except ValidationError:
        found = _checked(EntryManifest, text, str(path), _READER_FIX)  # another version's manifest
        return _checked(shape, text, str(path), _builder_fix(found.builder))  # the metrics a view types


def path(folder: Path | str) -> Path:
    """The manifest file of the entry in `folder`, to copy it whole (a push to a remote cache)."""
    return Path(folder) / MANIFEST


def load(folder: Path | str, shape: type[E] = EntryManifest) -> E:  # type: ignore[assignment]
    """The manifest of an entry that must have one (a builder's input)."""
    found = read(folder, shape)
    if found is None:
        raise EntryError(f"{folder}: no {MANIFEST}, so it is not a store entry; name a step that builds it")
    return found


def read_tokens_info(folder: Path | str) -> TokensInfo:
    """A tokens entry's tokens.json."""
    return _read_file(Path(folder) / TOKENS_INFO, TokensInfo, "tokens")


def read_teacher_info(folder: Path | str) -> TeacherOutputsInfo:
    """A teacher-outputs entry's teacher.json."""
    return _read_file(Path(folder) / TEACHER_INFO, TeacherOutputsInfo, "teacher")


def read_train_rows(folder: Path | str) -> list[TrainRow]:
    """A train entry's metrics.jsonl, a row per optimizer step."""
    path = Path(folder) / TRAIN_ROWS
    lines = _read_bytes(path).splitlines()
    return [_checked(TrainRow, line, f"{path}, line {n}", _builder_fix("train")) for n, line in enumerate(lines, 1)
            if line.strip()]


def read_evaluation(folder: Path | str) -> EvaluationResults:
    """An evaluate entry's metrics.json."""
    return _read_file(Path(folder) / EVALUATION, EvaluationResults, "evaluate")


_READER_FIX = ("written by another version of Ingot or edited by hand: `doit verify --repair` moves its entry "
               "aside, so the next `doit` rebuilds it")
_WRITER_FIX = "change runner.py and the type in compiler/entries.py together, so that readers read what it writes"


def _builder_fix(builder: str) -> str:
    return (f"targets/{builder}.py and its type in compiler/entries.py disagree (or the file was edited by hand): "
            "change them together")


def _read_file(path: Path, shape: type[D], builder: str) -> D:
    return _checked(shape, _read_bytes(path), str(path), _builder_fix(builder))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EntryError(f"{path}: cannot be read ({exc.strerror})") from None


def _checked(shape: type[B], data: bytes | dict, where: str, fix: str) -> B:
    try:
        return shape.model_validate_json(data) if isinstance(data, bytes) else shape.model_validate(data)
    except ValidationError as exc:
        raise EntryError(f"{where}: {problems(exc)}; {fix}") from None


def problems(exc: ValidationError) -> str:
    """Every error as `field.path: what`, in one line."""
    out = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"]) or "(the whole file)"
        if err["type"] == "missing":
            what = "missing"
        elif err["type"] == "extra_forbidden":
            what = "not a field its readers know"
        elif err["type"] == "json_invalid":
            what = f"not JSON ({err['msg']})"
        else:
            what = f"{err['msg'][0].lower()}{err['msg'][1:]} (found {json.dumps(err.get('input'), default=str)[:60]})"
        out.append(f"{field}: {what}")
    return "; ".join(out)
