"""The manifest language: pydantic models for datasets, models and pipelines.

Pure data, no I/O and no torch. Every field has a docstring (it becomes the JSON
Schema description editors show). Fields marked `UNKEYED` only describe or check
and never enter a content key; fields marked with `ref(...)` name another
manifest or step and are resolved by `compiler.project`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, WithJsonSchema,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
STEP_REF_PATTERN = r"^([a-z0-9][a-z0-9_-]*(@[a-z0-9][a-z0-9_-]*)?\.)?[a-z0-9][a-z0-9_-]*$"  # `step`, `pipeline.step`, `pipeline@variant.step`
UNKEYED = {"keyed": False}
UNORDERED = {"unordered": True}  # a set written as a list: its order enters no key

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]

# Upper bounds of sizes, generous for any model trained today, so that a slip of the keyboard
# (hidden_size 10^12) is a compile-time error naming the field and the bound, not a hang in
# the compiler or an allocation that fails hours into a build.
MAX_STEPS = 1_000_000_000      # optimizer steps, and every cadence counted in them
MAX_POSITIONS = 1 << 24        # 16,777,216 tokens: sequence lengths and contexts
MAX_BATCH = 1 << 16            # 65,536 sequences per micro-batch, micro-batches per step
MAX_SEED = 2**32 - 1           # what every seed API the builders call accepts (numpy's legacy one the narrowest)
Weight = Annotated[float, Field(gt=0)]


DEFAULT_TEMPLATE = "specs/templates/chat.jinja"  # the chat template of a tokenizer Ingot trained


def ref(kind: Literal["dataset", "model", "step"], default: Any = ...) -> Any:
    """A field that names a dataset or model manifest, or a step (`step` or `pipeline.step`);
    required unless a default (None: the reference is optional) is given."""
    pattern = STEP_REF_PATTERN if kind == "step" else NAME_PATTERN
    return Field(default, pattern=pattern, json_schema_extra={"ref": kind})


class Spec(BaseModel):
    # allow_inf_nan=False: `.inf`, `.nan` and numbers past a float's range are refused everywhere
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)


class Resources(Spec):
    """What a step asks of a machine when `INGOT_EXECUTOR=ray` runs it on a cluster. Never part of
    a content key: where a step runs does not change what it writes."""
    cpus: float | None = Field(None, ge=0, le=4096)
    """CPU cores (Ray's `num_cpus`). Default: 1; a train step of several processes on the CPU,
    its `nproc_per_node` (a dataset's `workers` ask for their own)."""
    gpus: float | None = Field(None, ge=0, le=4096)
    """GPUs (Ray's `num_gpus`). Default: 1 for a train or teacher-outputs step that runs on CUDA
    (its `nproc_per_node` under `distributed:`), else 0."""


class Manifest(Spec):
    name: Name = Field(json_schema_extra=UNKEYED)
    """Unique name of this manifest among those of its kind; other manifests refer to it by it."""
    description: str = Field("", json_schema_extra=UNKEYED)
    """Free text for people. Never part of a content key."""
    profiles: dict[Name, dict[str, Any]] = Field(default_factory=dict, max_length=64, json_schema_extra=UNKEYED)
    """Overlays by profile name, merged over this manifest when `doit profile=NAME` runs (at most 64:
    each is merged and checked on every compile)."""


# ---------------------------------------------------------------- datasets

DEFAULT_MODULES = (
    "abc", "argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "enum", "fractions", "functools", "heapq", "inspect",
    "json", "logging", "os", "pathlib", "pickle", "random", "re", "shutil", "statistics",
    "string", "subprocess", "textwrap", "threading", "typing", "unittest", "urllib", "zipfile",
)


class PydocsSource(Spec):
    type: Literal["pydocs"]
    """The Python documentation corpus that ships with every CPython."""
    topics: bool = True
    """Include the `pydoc_data` topics (the reference pages behind `help('TOPIC')`)."""
    modules: tuple[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")], ...] = DEFAULT_MODULES
    """Standard-library modules whose docstrings (module, classes, functions) become documents;
    a package includes its submodules. Read from source with `ast`, never imported."""
    records: Literal["texts", "pairs"] = "texts"
    """`texts`: each topic and docstring is a document. `pairs`: each is an instruction/response
    record instead, the instruction asking about what it documents ("Explain the Python topic
    'assert'.", "What does `def json.dumps(obj, ...)` do?") and the response its text; a small
    instruction dataset for supervised fine-tuning that needs no download."""

    def pairs(self) -> bool:
        return self.records == "pairs"


class FieldMap(Spec):
    text: str = "text"
    """Field of each JSONL record that holds the document text."""
    instruction: str | None = None
    """Field holding the instruction (user message) of an instruction/response record; with
    `response`, records are read as instruction/response pairs instead of `text`."""
    response: str | None = None
    """Field holding the response (assistant message) of an instruction/response record."""
    domain: str | None = None
    """Field holding the record's domain (metadata kept in the output and counted in the stats)."""
    difficulty: str | None = None
    """Field holding the record's difficulty (metadata kept in the output)."""
    source: str | None = None
    """Field holding where the record came from (metadata kept in the output and counted)."""

    @model_validator(mode="after")
    def _pair(self) -> "FieldMap":
        if (self.instruction is None) != (self.response is None):
            raise ValueError("give both `instruction` and `response` (an instruction/response record), or neither")
        return self

    def chat(self) -> bool:
        """Whether records are instruction/response pairs rather than texts."""
        return self.instruction is not None


class FilesSource(Spec):
    type: Literal["files"]
    """Local files matched by a glob."""
    glob: str = Field(min_length=1)
    """Glob relative to the project root, e.g. `data/*.jsonl`. A `.txt` file is one document,
    a `.jsonl` file one document per line."""
    fields: FieldMap = FieldMap()
    """Where each JSONL record keeps its text."""

    def pairs(self) -> bool:
        return self.fields.chat()


class FailuresSource(Spec):
    # `from` is a Python keyword: the field is `from_`, written `from` in manifests and in dumps
    model_config = ConfigDict(serialize_by_alias=True)

    type: Literal["failures"]
    """The items an evaluate step's model got wrong, as instruction/response records: each
    prompt it failed (`passed: false` under exact, number or python scoring) or lost or tied
    against the reference model (judge scoring), in the order of the prompt set, for a targeted
    fine-tune on them. The dataset is built after the evaluate step and follows its results."""
    from_: str = Field(alias="from", pattern=r"^[a-z0-9][a-z0-9_-]*(@[a-z0-9][a-z0-9_-]*)?\.[a-z0-9][a-z0-9_-]*$")
    """The evaluate step (`pipeline.step`, or `pipeline@variant.step`) whose per-item results
    (its `items.jsonl`) are read; it must score items, and must not measure a model trained on
    this dataset (a cycle)."""
    response: Literal["reference", "expected"] | None = None
    """Which answer becomes the response: `reference` (the reference model's answer, judge
    scoring only), or `expected` (the prompt set's own response). Default: the reference answer
    where the item has one, else the expected one. The model's own wrong answer never is."""
    include: tuple[Literal["loss", "tie"], ...] = Field(("loss", "tie"), min_length=1,
                                                         json_schema_extra=UNORDERED)
    """Which judge verdicts count as failures: `[loss]` leaves ties out. An item that failed
    exact, number or python scoring always counts."""

    def pairs(self) -> bool:
        return True


Source = Annotated[Union[PydocsSource, FilesSource, FailuresSource], Field(discriminator="type")]


LANGUAGE_CODE = r"^[a-z]{2,3}$"


class Filters(Spec):
    min_chars: int = Field(1, ge=0)
    """Drop documents shorter than this many characters (after normalization)."""
    max_chars: int | None = Field(None, ge=1)
    """Drop documents longer than this many characters; no limit when absent."""
    tokenizer: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]*\.[a-z0-9][a-z0-9_-]*$")
    """A tokenizer step (`pipeline.step`) whose tokens `min_tokens` and `max_tokens` count."""
    min_tokens: int | None = Field(None, ge=1)
    """Drop documents of fewer tokens of `tokenizer`."""
    max_tokens: int | None = Field(None, ge=1)
    """Drop documents of more tokens of `tokenizer`."""
    languages: tuple[Annotated[str, Field(pattern=LANGUAGE_CODE)], ...] = ()
    """Keep only documents identified (py3langid, offline) as one of these languages, by
    py3langid's codes: ISO 639-1 where the language has one (`en`, `fr`, `zh`), else ISO 639-3
    (`yue`, `wuu`); every language when empty."""
    min_language_score: float = Field(0.5, ge=0, le=1)
    """With `languages`: the identified language's probability must reach this, too."""
    include: tuple[str, ...] = ()
    """Regular expressions (Python `re`): keep only documents matching at least one."""
    exclude: tuple[str, ...] = ()
    """Regular expressions: drop documents matching any."""
    max_symbol_ratio: float | None = Field(None, gt=0, le=1)
    """Drop documents whose characters are more than this fraction neither letters, digits nor
    whitespace."""
    min_mean_word_length: float | None = Field(None, gt=0)
    """Drop documents whose words (split on whitespace) are shorter than this on average."""
    max_mean_word_length: float | None = Field(None, gt=0)
    """Drop documents whose words are longer than this on average."""
    max_repeated_lines: float | None = Field(None, ge=0, lt=1)
    """Drop documents in which more than this fraction of the non-empty lines repeat an earlier line."""


class NearDedup(Spec):
    threshold: float = Field(0.8, gt=0, lt=1)
    """Jaccard similarity of shingle sets at or above which two documents are near-duplicates."""
    num_perm: int = Field(128, ge=16, le=1024)
    """MinHash permutations; bands and rows of the LSH are chosen from these and the threshold."""
    shingle: Literal["word", "char"] = "word"
    """Shingles are word n-grams (case-folded) or character n-grams."""
    ngram: int = Field(3, ge=1, le=32)
    """Words (or characters) per shingle."""
    verify: bool = True
    """Check every LSH candidate pair by the exact Jaccard of its shingles; without it, every
    candidate counts (faster, some false positives)."""
    seed: int = Field(1, ge=0, le=MAX_SEED)
    """Seed of the MinHash functions."""
    workers: int | None = Field(None, ge=1, le=1024, json_schema_extra=UNKEYED)
    """Processes that shingle and hash the documents; default: one per core. The result does not
    depend on it."""


class Split(Spec):
    validation: float = Field(0.05, ge=0, lt=1)
    """Fraction of documents held out for validation, chosen by a hash of the text, so a
    document keeps its side when others are added."""
    salt: str = "ingot"
    """Salt of the split hash: change it to draw a different, equally stable split."""


class DatasetSpec(Manifest):
    kind: Literal["dataset"]
    """A curated text dataset."""
    sources: tuple[Source, ...] = Field(min_length=1)
    """Where documents come from, read in this order."""
    normalize: Literal["NFC", "NFKC", "NFD", "NFKD", "none"] = "NFC"
    """Unicode normalization applied to every document before filtering and dedup."""
    filters: Filters = Filters()
    """Length filters, applied in the order listed."""
    dedup: Literal["exact", "none"] = "exact"
    """`exact` drops a document whose normalized text was already seen (xxh3 digest)."""
    near_dedup: NearDedup | None = None
    """MinHash LSH near-duplicate removal after exact dedup: one document of each cluster of
    near-duplicates is kept (the first read); none when absent."""
    bad_records: Literal["error", "skip"] = "error"
    """A malformed JSONL line, a missing field or invalid UTF-8: stop with an error naming the
    file and line, or `skip` the record and count it in stats.json."""
    split: Split = Split()
    """The deterministic train/validation split."""
    shard_docs: int = Field(10_000, ge=1, le=100_000_000)
    """Documents per output shard file."""
    workers: int = Field(1, ge=1, le=1024, json_schema_extra=UNKEYED)
    """Ray workers that compute the near-dedup MinHash signatures in parallel (one deterministic
    merge: the output is the same bytes for any number); 1 computes them here."""
    resources: Resources | None = Field(None, json_schema_extra=UNKEYED)
    """What the build asks of a Ray cluster (`INGOT_EXECUTOR=ray`)."""

    @model_validator(mode="after")
    def _one_shape(self) -> "DatasetSpec":
        shapes = {s.pairs() for s in self.sources}
        if len(shapes) > 1:
            raise ValueError("every source gives texts, or every one gives instruction/response records "
                             "(`fields: {instruction: ..., response: ...}`); this dataset mixes both")
        return self

    def chat(self) -> bool:
        """Whether the records are instruction/response pairs (for `objective: sft`) rather than texts."""
        return self.sources[0].pairs()

    def summary(self) -> str:
        kinds = ", ".join(s.glob if isinstance(s, FilesSource) else f"failures of {s.from_}"
                          if isinstance(s, FailuresSource) else "python docs" for s in self.sources)
        near = f", near-dup at Jaccard {self.near_dedup.threshold:g}" if self.near_dedup else ""
        return f"documents from {kinds}; {self.dedup} dedup{near}, {self.split.validation:.0%} validation"


# ---------------------------------------------------------------- models

class RopeScaling(Spec):
    type: Literal["linear", "llama3"]
    """`linear`: every RoPE frequency divided by `factor` (position interpolation). `llama3`:
    Llama 3.1's scheme: wavelengths longer than `original_max_positions / low_freq_factor`
    divided by `factor`, shorter than `original_max_positions / high_freq_factor` kept, those
    between interpolated."""
    factor: float = Field(gt=0, le=1024)
    """How much longer a context the scaled RoPE covers (8 for Llama 3.1)."""
    low_freq_factor: float = Field(1.0, gt=0)
    """`llama3` only: `original_max_positions` divided by this is the wavelength above which a
    frequency is fully scaled (1 for Llama 3.1)."""
    high_freq_factor: float = Field(4.0, gt=0)
    """`llama3` only: `original_max_positions` divided by this is the wavelength below which a
    frequency is kept (4 for Llama 3.1)."""
    original_max_positions: int | None = Field(None, ge=1, le=MAX_POSITIONS)
    """`llama3` only, and required there: the context length the model was pretrained with before
    scaling (8192 for Llama 3.1)."""

    @field_validator("high_freq_factor")
    @classmethod
    def _above_low(cls, high: float, info: ValidationInfo) -> float:
        low = info.data.get("low_freq_factor")
        if info.data.get("type") == "llama3" and low is not None and high <= low:
            raise ValueError(f"a `high_freq_factor` above `low_freq_factor` ({low:g}): llama3 scaling interpolates "
                             "between the two (Llama 3.1: 1 and 4)")
        return high

    @model_validator(mode="after")
    def _llama3_fields(self) -> "RopeScaling":
        extra = [f for f in ("low_freq_factor", "high_freq_factor", "original_max_positions")
                 if f in self.model_fields_set]
        if self.type == "linear" and extra:
            raise ValueError(f"give {' and '.join(f'`{f}`' for f in extra)} only with `type: llama3` (linear "
                             f"scaling divides every frequency by `factor`; remove {'them' if extra[1:] else 'it'}, "
                             "or set `type: llama3`)")
        if self.type == "llama3" and self.original_max_positions is None:
            raise ValueError("give `original_max_positions` with `type: llama3` (the context length the model was "
                             "pretrained with before scaling: 8192 for Llama 3.1)")
        return self


HF_ARCHITECTURES = ("llama", "qwen2", "mistral")
# compiler.plugins.PATTERN, written out: that module imports the node type, which imports this one
PLUGIN_PATTERN = r"^module:[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$"
OptionName = Annotated[str, Field(pattern=r"^[_A-Za-z][_0-9A-Za-z]*$", max_length=64)]


def _scalar(value: Any) -> Any:
    if value is None or not isinstance(value, (int, float, bool, str)):
        raise PydanticCustomError("option_value", "A number, true or false, or a string (each option is one value)")
    return value


OptionValue = Annotated[Any, AfterValidator(_scalar),
                        WithJsonSchema({"type": ["integer", "number", "boolean", "string"]})]


class ModelSpec(Manifest):
    kind: Literal["model"]
    """A model architecture."""
    architecture: str = Field("llama", json_schema_extra={"anyOf": [{"enum": list(HF_ARCHITECTURES)},
                                                                    {"pattern": PLUGIN_PATTERN}]})
    """Model family, as transformers names it: `llama` (RMSNorm, RoPE, SwiGLU, grouped-query
    attention), `qwen2` (the same with biases on the query, key and value projections) or
    `mistral` (Llama's layout, with an optional sliding attention window); or a plug-in
    `module:PATH:CLASS`: a torch module of the project (PATH a .py file from the project root)
    that builds itself from this manifest's fields and `options` (README, "Plug-in
    architectures"); its source, and the project files it imports, enter the keys of the steps
    that run it."""
    hidden_size: int = Field(ge=1, le=131_072)
    """Width of the residual stream."""
    intermediate_size: int = Field(ge=1, le=1_048_576)
    """Width of the SwiGLU feed-forward layer."""
    layers: int = Field(ge=1, le=1024)
    """Number of decoder layers."""
    heads: int = Field(ge=1, le=1024)
    """Attention (query) heads per layer."""
    kv_heads: int | None = Field(None, ge=1, le=1024)
    """Key/value heads per layer (grouped-query attention); defaults to `heads`."""
    head_dim: int | None = Field(None, ge=1, le=4096)
    """Width of one attention head; defaults to `hidden_size / heads`."""
    vocab_size: int = Field(ge=1, le=4_194_304)
    """Rows of the embedding and the LM head; at least the paired tokenizer's vocabulary."""
    max_positions: int = Field(2048, ge=1, le=MAX_POSITIONS)
    """Longest sequence the model is built for (RoPE positions)."""
    rope_theta: float = Field(10_000.0, gt=0, le=10**12)
    """RoPE base frequency."""
    rope_scaling: RopeScaling | None = None
    """RoPE scaling for a context longer than pretraining saw (`linear`, or Llama 3.1's `llama3`);
    plain RoPE when absent."""
    sliding_window: int | None = Field(None, ge=1, le=MAX_POSITIONS)
    """`mistral` only: each token attends to at most this many positions (itself included), as
    Mistral 7B v0.1 (4096); every earlier position when absent, as Mistral v0.2 and later. llama.cpp
    does not apply a window to Mistral, so a GGUF export of a windowed model is refused."""
    rms_norm_eps: float = Field(1e-6, gt=0, le=1)
    """Epsilon of every RMSNorm."""
    tie_embeddings: bool = False
    """Share the input embedding with the LM head."""
    options: dict[OptionName, OptionValue] = Field(default_factory=dict, max_length=256)
    """A plug-in architecture's own hyperparameters (`{max_steps: 8, ponder_weight: 0.01}`),
    handed to it under `options` beside the fields above; plug-ins only."""
    expect_params: int | None = Field(None, ge=1, le=10**16, json_schema_extra=UNKEYED)
    """When given, compiling fails unless the derived parameter count equals it (a plug-in's
    count comes from its `parameter_count`, checked when a train step builds it)."""

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        if value in HF_ARCHITECTURES or re.match(PLUGIN_PATTERN, value):
            return value
        raise ValueError("one of 'llama', 'qwen2' or 'mistral', or a plug-in `module:PATH:CLASS` (PATH a .py file "
                         "from the project root, CLASS a class it defines)")

    @field_validator("rope_scaling")
    @classmethod
    def _scaling_of_hf(cls, scaling: RopeScaling | None, info: ValidationInfo) -> RopeScaling | None:
        arch = info.data.get("architecture")
        if scaling is not None and arch is not None and arch not in HF_ARCHITECTURES:
            raise ValueError(f"no `rope_scaling` for the plug-in architecture {arch}, which places positions its "
                             "own way (remove `rope_scaling`, and give the plug-in what it needs under `options`)")
        return scaling

    @field_validator("options")
    @classmethod
    def _options_of_plugin(cls, options: dict, info: ValidationInfo) -> dict:
        arch = info.data.get("architecture")
        if options and arch in HF_ARCHITECTURES:
            raise ValueError(f"no `options` for architecture {arch}, whose hyperparameters are the fields above "
                             "(remove `options`, or name a plug-in `architecture: module:PATH:CLASS`)")
        return options

    @field_validator("sliding_window")
    @classmethod
    def _window_of_mistral(cls, window: int | None, info: ValidationInfo) -> int | None:
        arch = info.data.get("architecture")
        if window is not None and arch is not None and arch not in HF_ARCHITECTURES:
            raise ValueError(f"no `sliding_window` for the plug-in architecture {arch} (remove `sliding_window`, and "
                             "give the plug-in its window under `options` if it has one)")
        if window is not None and arch is not None and arch != "mistral":
            raise ValueError(f"no `sliding_window` for architecture {arch}, which attends to every earlier position "
                             "(only `mistral` has a window: remove `sliding_window`, or set `architecture: mistral`)")
        return window

    @model_validator(mode="after")
    def _derive(self) -> "ModelSpec":
        # Fill derived fields so that writing a default out explicitly keeps the key.
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.head_dim is None and self.hidden_size % self.heads == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.heads)
        return self


# ---------------------------------------------------------------- pipeline steps

class Step(Spec):
    description: str = Field("", json_schema_extra=UNKEYED)
    """Free text for people. Never part of a content key."""
    resources: Resources | None = Field(None, json_schema_extra=UNKEYED)
    """What the step asks of a Ray cluster (`INGOT_EXECUTOR=ray`)."""


class SpecialTokens(Spec):
    bos: str = Field("<s>", min_length=1)
    """Beginning-of-sequence token."""
    eos: str = Field("</s>", min_length=1)
    """End-of-sequence token; also separates packed documents."""
    unk: str = Field("<unk>", min_length=1)
    """Unknown token (byte-level BPE never needs it, but loaders expect one)."""
    pad: str = Field("<pad>", min_length=1)
    """Padding token."""


HUB_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
REVISION = r"^[0-9a-f]{40}$"


class Existing(Step):
    """Where an existing Hugging Face folder comes from: a folder of the project, or the hub."""

    path: str | None = Field(None, json_schema_extra=UNKEYED)
    """A folder inside the project (relative to its root). The contents of its files key the
    step, not its place: moving the folder within the project rebuilds nothing."""
    hub: str | None = Field(None, pattern=HUB_ID)
    """Or: a Hugging Face hub id (`Qwen/Qwen2.5-1.5B-Instruct`), downloaded through huggingface_hub
    into its cache (`HF_HUB_OFFLINE=1` reads the cache only)."""
    revision: str | None = Field(None, pattern=REVISION)
    """With `hub`: the commit hash (40 hex digits) to download. Required: a branch such as `main`
    moves, and the step's key could not say what was built."""

    def origin(self) -> str:
        return f"hub {self.hub}@{self.revision[:12]}" if self.hub else f"folder {self.path}"

    def _one_origin(self, others: tuple[str, ...] = ()) -> None:
        given = [f for f in (*others, "path", "hub") if getattr(self, f) is not None]
        if len(given) != 1:
            names = ", ".join(f"`{f}`" for f in (*others, "path"))
            raise ValueError(f"give exactly one of {names} or `hub` (found {len(given)})")
        if self.hub is not None and self.revision is None:
            raise ValueError(f"a pinned `revision:` with `hub: {self.hub}`: the commit hash (40 hex digits) of "
                             "the files to use, as the hub's 'Files and versions' page shows it; a branch moves, "
                             "so the step's key could not say what was built")
        if self.hub is None and self.revision is not None:
            raise ValueError("`revision` only with `hub`")


class TokenizerStep(Existing):
    kind: Literal["tokenizer"]
    """Train a tokenizer of a family (BPE) on a dataset's train split, or take an existing one
    (`path` or `hub`: its tokenizer.json, configuration and chat template)."""
    dataset: str | None = ref("dataset", None)
    """Name of the dataset manifest to train on."""
    family: Literal["gpt2", "llama3", "qwen2", "sentencepiece"] = "gpt2"
    """The tokenizer trained, with its family's real definition in tokenizer.json (training only):
    `gpt2`, GPT-2's byte-level BPE (a ByteLevel pre-tokenizer with GPT-2's regex); `llama3`,
    Llama 3's (a Split by Llama 3's regex, then ByteLevel without regex; `ignore_merges`), with
    its special tokens `<|begin_of_text|>`, `<|end_of_text|>`, the chat and the first reserved
    ones after the vocabulary; `qwen2`, Qwen2's (NFC, a Split by Qwen2's regex, then ByteLevel),
    with the 22 added tokens of Qwen2.5 (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, ...) after
    the vocabulary; `sentencepiece`, SentencePiece-style BPE with byte fallback as Llama 2 and
    TinyLlama ship it (`<unk>`, `<s>`, `</s>`, then `<0x00>`..`<0xFF>`; a Prepend + Replace
    normalizer makes spaces "▁"; the merges transformers' converter writes). A trained tokenizer
    has no chat template: steps use specs/templates/chat.jinja."""
    vocab_size: int | None = Field(None, ge=260, le=1_000_000)
    """Vocabulary size including the byte symbols (byte tokens for `sentencepiece`) and every
    special or added token (training only)."""
    min_frequency: int = Field(2, ge=1, le=1_000_000_000)
    """A pair must occur this often to be merged."""
    special_tokens: SpecialTokens | None = None
    """The bos, eos, unk and pad tokens (training only). Left out, the family's own: for `gpt2`
    `<s>`, `</s>`, `<unk>` and `<pad>`; for `llama3` `<|begin_of_text|>` and `<|end_of_text|>` (no
    unk, no pad); for `qwen2` `<|endoftext|>` as eos and pad (no bos, no unk); for `sentencepiece`
    `<s>`, `</s>` and `<unk>` (no pad). Written, it gives the roles whole (with `gpt2` a role left
    out takes the token above; another family needs all four). With `gpt2` they are its special
    tokens, given the first ids in the order bos, eos, unk, pad; another family keeps its own
    special tokens, and a role's token not among them is added after them."""
    add_bos_token: bool | None = None
    """Whether encoding prepends the bos token (training only); default: as the family ships it,
    true for `llama3` and `sentencepiece`, false for `gpt2` and `qwen2`."""
    max_length: int = Field(2048, ge=1, le=MAX_POSITIONS)
    """`model_max_length` written to `tokenizer_config.json` (training only)."""

    @field_validator("family", mode="before")
    @classmethod
    def _sentencepiece_by_model(cls, family: Any) -> Any:
        if family in ("llama2", "tinyllama", "mistral"):  # a did-you-mean would offer llama3
            raise ValueError("`family: sentencepiece` for the tokenizer of Llama 2, TinyLlama and Mistral "
                             "(SentencePiece-style BPE with byte fallback)")
        return family

    @field_validator("special_tokens")
    @classmethod
    def _all_roles(cls, tokens: SpecialTokens | None, info: ValidationInfo) -> SpecialTokens | None:
        family = info.data.get("family", "gpt2")
        if tokens is not None and family != "gpt2" and info.data.get("dataset") is not None \
                and len(tokens.model_fields_set) < len(SpecialTokens.model_fields):
            raise ValueError(f"give all of `bos`, `eos`, `unk` and `pad` with `family: {family}`, or no "
                             "`special_tokens` to keep the family's own (written, they replace its roles whole)")
        return tokens

    @field_validator("add_bos_token")
    @classmethod
    def _bos_to_add(cls, add: bool | None, info: ValidationInfo) -> bool | None:
        if add and info.data.get("family") == "qwen2" and info.data.get("special_tokens", False) is None \
                and info.data.get("dataset") is not None:
            raise ValueError("no `add_bos_token: true` with `family: qwen2` and its own special tokens, which have "
                             "no bos (name one in `special_tokens`, or remove `add_bos_token`)")
        return add

    @model_validator(mode="after")
    def _source(self) -> "TokenizerStep":
        self._one_origin(("dataset",))
        trained = self.dataset is not None
        if trained and self.vocab_size is None:
            raise ValueError("a `vocab_size:` for the tokenizer trained on the dataset")
        if not trained:
            given = sorted(f for f in ("family", "vocab_size", "min_frequency", "special_tokens", "add_bos_token",
                                       "max_length") if getattr(self, f) != type(self).model_fields[f].default)
            if given:
                raise ValueError(f"no {', '.join(f'`{f}`' for f in given)} for a tokenizer taken from "
                                 f"`{'path' if self.path is not None else 'hub'}` (they shape a trained one)")
            return self
        # Fill the family's defaults so that writing one out explicitly keeps the key.
        if self.special_tokens is None and self.family == "gpt2":
            object.__setattr__(self, "special_tokens", SpecialTokens())
        if self.add_bos_token is None:
            object.__setattr__(self, "add_bos_token", self.family in ("llama3", "sentencepiece"))
        return self

    def trained(self) -> bool:
        return self.dataset is not None

    def summary(self) -> str:
        if not self.trained():
            return f"the tokenizer of {self.origin()}"
        kind = {"gpt2": "byte-level BPE", "llama3": "Llama 3 byte-level BPE", "qwen2": "Qwen2 byte-level BPE",
                "sentencepiece": "SentencePiece-style BPE"}[self.family]
        return f"{kind} of {self.vocab_size:,} tokens trained on dataset '{self.dataset}'"


class PretrainedStep(Existing):
    kind: Literal["pretrained"]
    """An existing Hugging Face model: its weights, config.json and tokenizer, to fine-tune
    (`init:`), distill from, evaluate or export, and whose tokenizer a step can use (`tokenizer:`).
    Only safetensors, JSON and tokenizer files are read; remote code never runs."""
    model: str | None = Field(None, pattern=NAME_PATTERN, json_schema_extra={"ref": "model", "keyed": False})
    """The architecture you expect, as a model manifest: lets a `hub` model compile before its
    config.json is in the cache, and makes the compiler check config.json against it."""

    @model_validator(mode="after")
    def _source(self) -> "PretrainedStep":
        self._one_origin()
        return self

    def summary(self) -> str:
        return f"the pretrained model of {self.origin()}"


class InitStep(Step):
    kind: Literal["init"]
    """Randomly initialize a model for a tokenizer: the starting point of training."""
    model: str = ref("model")
    """Name of the model manifest."""
    tokenizer: str = ref("step")
    """The tokenizer step the model is paired with (`step` or `pipeline.step`)."""
    seed: int = Field(0, ge=0, le=MAX_SEED)
    """Seed of the initialization."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Precision of the saved weights."""

    def summary(self) -> str:
        return f"{self.dtype} weights of model '{self.model}' initialized with seed {self.seed}"


class TokensStep(Step):
    """Made by the compiler, never written by hand: a dataset tokenized by a tokenizer step,
    shared by every train step that reads that pair (task `PIPELINE.TOKENIZER@DATASET`)."""

    kind: Literal["tokens"]
    """A dataset's documents as token ids, each followed by eos, packed into one stream per split."""
    dataset: str = ref("dataset")
    """The dataset to tokenize."""
    tokenizer: str = ref("step")
    """The tokenizer step (as `pipeline.step`)."""
    chat_template: str | None = None
    """For an instruction/response dataset: the Jinja chat template (relative to the project
    root, or `@tokenizer`: the tokenizer entry's own) each record is rendered with; a response
    mask is written beside the ids. None for texts."""

    def summary(self) -> str:
        return f"dataset '{self.dataset}' as token ids of '{self.tokenizer}', packed for training"


class TeacherOutputsStep(Step):
    """Made by the compiler, never written by hand: what a `step` teacher predicts over the train
    split of a dataset a distilling student reads, computed once and shared by every student with
    the same teacher, tokens, window length, top_k, temperature and alignment (task
    `PIPELINE.TEACHER~TOKENS~sLEN~kK~tT[~ALIGN]`, e.g. `main.teacher~tok@docs~s128~k64~t2`)."""

    kind: Literal["teacher_outputs"]
    """The teacher's top-k log-probabilities on the student's data, as shards of groups."""
    teacher: str = Field(pattern=STEP_REF_PATTERN, json_schema_extra=UNKEYED)
    """The teacher step (as `pipeline.step`); its weights, an input, key the outputs, not its name."""
    dataset: str = Field(pattern=NAME_PATTERN, json_schema_extra=UNKEYED)
    """The dataset whose student tokens the teacher reads (its tokens entry is an input)."""
    tokenizer: str = Field(pattern=STEP_REF_PATTERN, json_schema_extra=UNKEYED)
    """The student's tokenizer step (as `pipeline.step`), whose ids the tokens are."""
    align: Literal["same", "uld", "map"]
    """How teacher and student tokens meet (`Teacher.align`, resolved)."""
    top_k: int | Literal["all"]
    """Log-probabilities kept per group (`Distill.top_k`)."""
    seq_len: int = Field(ge=2, le=MAX_POSITIONS)
    """Student tokens per window: the train split is cut into consecutive windows of this length."""
    temperature: float = Field(gt=0)
    """The distillation temperature the log-probabilities are computed at (`Distill.temperature`)."""
    windows: int | None = Field(None, ge=1, le=1 << 32)
    """Only the first this many windows of the split (`Distill.windows`); all when absent."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the teacher runs: CUDA when present, else the CPU; decided at compile time, in the key."""

    def builder(self) -> str:
        return "teacher"

    def summary(self) -> str:
        k = "the whole distribution" if self.top_k == "all" else f"top-{self.top_k} log-probabilities"
        return (f"{k} of teacher '{self.teacher}' at T {self.temperature:g} over dataset '{self.dataset}', "
                f"windows of {self.seq_len}, align {self.align}")


OPTIMIZER_KINDS = ("adamw", "muon", "sgd")


def _option(value: Any) -> Any:
    items = value if isinstance(value, list) else [value]
    if not items or not all(v is not None and isinstance(v, (int, float, bool, str)) for v in items):
        raise PydanticCustomError("option_value", "A number, true or false, a string, or a list of them")
    return value


OPTION_SCALAR = {"type": ["integer", "number", "boolean", "string"]}
OptimizerOption = Annotated[Any, AfterValidator(_option),
                            WithJsonSchema({"anyOf": [OPTION_SCALAR, {"type": "array", "items": OPTION_SCALAR}]})]


class Muon(Spec):
    """Muon's settings for the hidden layers' weight matrices (PyTorch's `torch.optim.Muon`)."""
    lr: float = Field(0.02, gt=0)
    """Peak learning rate of the matrices; the schedule scales it as it scales `optimizer.lr`."""
    momentum: float = Field(0.95, ge=0, lt=1)
    """Momentum of the gradient before it is orthogonalized."""
    nesterov: bool = True
    """Nesterov momentum."""
    ns_steps: int = Field(5, ge=1, le=99)
    """Newton–Schulz iterations that orthogonalize each update."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay of the matrices (`optimizer.weight_decay` is that of the AdamW part)."""
    adjust_lr: Literal["original", "match_rms_adamw"] = "original"
    """How the step follows a matrix's shape (rows A, columns B): `original`, Keller Jordan's
    lr · sqrt(max(1, A / B)); or `match_rms_adamw`, Moonshot's lr · 0.2 · sqrt(max(A, B)), which
    gives updates of AdamW's size, so that AdamW's learning rate and weight decay carry over."""


class Grokfast(Spec):
    """Grokfast's gradient filter (Lee et al., 2024, "Grokfast: Accelerated Grokking by Amplifying
    Slow Gradients"), its EMA form: after the gradients of a step are accumulated and before they
    are clipped, h ← alpha · h + (1 − alpha) · g, then g ← g + lambda · h (h starts as the first
    step's gradient, as in the paper's code). h is part of the optimizer's state, so checkpoints
    keep it."""
    model_config = ConfigDict(serialize_by_alias=True)  # `lambda` is a Python keyword: the field is lambda_

    alpha: float = Field(0.98, ge=0, lt=1)
    """Decay of the slow-gradient average h (the paper's default 0.98)."""
    lambda_: float = Field(2.0, gt=0, alias="lambda")
    """How much of h is added to each gradient (the paper's default 2)."""


class Optimizer(Spec):
    kind: str = Field("adamw", json_schema_extra={"anyOf": [{"enum": list(OPTIMIZER_KINDS)},
                                                            {"pattern": PLUGIN_PATTERN}]})
    """`adamw`; `muon`: Muon (PyTorch's) for the 2-D weights of the hidden layers' linear maps,
    AdamW for the rest (embeddings, LM head, norms, biases), as Muon is meant to be used; `sgd`:
    SGD with momentum; or a plug-in `module:PATH:CLASS`, a `torch.optim.Optimizer` subclass defined
    in a Python file of the project (README, Optimizers), built as `CLASS(param_groups, lr=lr,
    **options)`."""
    lr: float = Field(3e-4, gt=0)
    """Peak learning rate: AdamW's (with `muon`, that of the AdamW part), SGD's or the plug-in's."""
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.95)
    """AdamW's beta1 and beta2 (`adamw`, and the AdamW part of `muon`)."""
    weight_decay: float = Field(0.0, ge=0)
    """Weight decay of the matrices (norms and embeddings are not decayed): decoupled for AdamW and
    Muon's AdamW part (whose matrix is the LM head), L2 for SGD, in the groups a plug-in gets."""
    eps: float = Field(1e-8, gt=0)
    """AdamW's epsilon (`adamw`, and the AdamW part of `muon`)."""
    momentum: float | None = Field(None, ge=0, lt=1, validate_default=True)
    """`sgd` only: its momentum; 0.9 when left out (0 for plain SGD)."""
    nesterov: bool | None = Field(None, validate_default=True)
    """`sgd` only: Nesterov momentum (needs momentum above 0); false when left out."""
    muon: Muon | None = Field(None, validate_default=True)
    """`muon` only: the matrices' learning rate, momentum, Newton–Schulz steps and weight decay;
    Muon's defaults when left out."""
    options: dict[OptionName, OptimizerOption] = Field(default_factory=dict, max_length=256)
    """A plug-in only: keyword arguments of its constructor beside `lr` (numbers, strings, booleans
    and lists of them), e.g. `{betas: [0.9, 0.99]}`."""
    grokfast: Grokfast | None = None
    """Amplify the slow part of the gradients (Grokfast's EMA filter), with any kind."""
    qk_clip: float | None = Field(None, gt=0)
    """QK-clip at this threshold τ (MuonClip, Kimi K2): after each optimizer step, every attention
    head whose largest pre-softmax logit (q · k / sqrt(head_dim), causal positions) in that step's
    forward passes exceeded τ gets its query and key weights (and biases) scaled by
    sqrt(τ / max_logit) each, which scales that logit to τ. With grouped-query attention a key
    head shared by several query heads is scaled by the square root of the mildest of their
    factors, and each query head by the rest of its own factor, so a head under τ is left as it
    is. Any kind; not with LoRA (the weights it would scale are frozen) or FSDP."""

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind in OPTIMIZER_KINDS or re.match(PLUGIN_PATTERN, kind):
            return kind
        from pydantic_core import PydanticCustomError

        raise PydanticCustomError("literal_error", "Input should be {expected}", {
            "expected": "'adamw', 'muon', 'sgd' or 'module:PATH:CLASS' (PATH a .py file relative to the "
                        "project root, CLASS the torch.optim.Optimizer subclass it defines)"})

    @field_validator("momentum", "nesterov", "muon")
    @classmethod
    def _kind_defaults(cls, value: Any, info: ValidationInfo) -> Any:
        # filled in here, so that writing a kind's default out keys the step as leaving it out
        defaults = {("sgd", "momentum"): 0.9, ("sgd", "nesterov"): False, ("muon", "muon"): Muon()}
        return defaults.get((info.data.get("kind"), info.field_name)) if value is None else value


class Schedule(Spec):
    kind: Literal["constant", "cosine"] = "cosine"
    """`constant` after warmup, or `cosine` decay from lr to lr * min_lr_ratio at the last step."""
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS)
    """Optimizer steps of linear warmup from 0 to lr."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final learning rate of the cosine schedule, as a fraction of lr."""


class Evaluation(Spec):
    every: int = Field(50, ge=1, le=MAX_STEPS)
    """Evaluate validation loss every this many optimizer steps (and at the last step)."""
    batches: int = Field(8, ge=1, le=100_000)
    """Validation batches per evaluation (always the same ones)."""


class Checkpoints(Spec):
    every: int = Field(50, ge=1, le=MAX_STEPS)
    """Save a checkpoint (weights, optimizer, schedule, RNG, data cursor) every this many steps."""
    keep: int = Field(2, ge=1, le=10_000)
    """Keep the last this many checkpoints, plus the best by validation loss."""


class EarlyStopping(Spec):
    patience: int = Field(ge=1, le=MAX_STEPS)
    """Stop after this many evaluations without an improvement of validation loss."""
    min_delta: float = Field(0.0, ge=0)
    """An improvement must lower validation loss by more than this."""


class Teacher(Spec):
    step: str | None = ref("step", None)
    """A train or init step of this project whose weights teach (`step` or `pipeline.step`)."""
    path: str | None = None
    """Or: a local Hugging Face model folder, relative to the project root."""
    hub: str | None = None
    """Or: a Hugging Face hub id, for machines that can reach the hub."""
    align: Literal["same", "uld", "map"] | None = None
    """How the teacher's predictions meet the student's tokens. `same`: token by token, id by id,
    for a teacher whose tokenizer step is the student's (the default then). A teacher with another
    tokenizer needs one of: `uld`, Universal Logit Distillation (Boizard et al., 2024): both
    tokenizations of the same text grouped where their tokens end at the same byte, and the sorted
    probabilities of each group compared (an L1 distance, in place of KL · T²), whatever the
    vocabularies; or `map`: the KL over the student's ids, the teacher's carried onto the student
    ids of the same bytes. A `step` teacher's outputs are computed once per (teacher, dataset,
    seq_len, top_k, temperature, align), stored, and read by every student that needs them; a
    `path` or `hub` teacher runs live beside the student, `same` only."""

    @model_validator(mode="after")
    def _one_source(self) -> "Teacher":
        given = [f for f in ("step", "path", "hub") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of `step`, `path` or `hub` (found {len(given)})")
        return self


class Phase(Spec):
    name: str = ""
    """Label of the phase in metrics and reports."""
    steps: int = Field(ge=1, le=MAX_STEPS)
    """Optimizer steps of this phase."""
    teachers: dict[Name, Weight] = Field(min_length=1)
    """Teachers of this phase by name, with the weight of each one's distillation loss."""


class Distill(Spec):
    teachers: dict[Name, Teacher] = Field(min_length=1)
    """The teachers, by a name the phases use."""
    temperature: float = Field(2.0, gt=0)
    """Softmax temperature T of teacher and student logits; the KL term is scaled by T². A step
    teacher's stored outputs are computed at it (the top-k of softmax(z / T) is not that of
    softmax(z)), so an edit here runs such a teacher again; other student fields do not."""
    alpha: float = Field(0.5, ge=0, le=1)
    """loss = alpha · Σ weight · KL(teacher ‖ student) · T² + (1 - alpha) · CE."""
    phases: tuple[Phase, ...] = Field(min_length=1)
    """Phases in order; each runs its own teachers for its own steps."""
    top_k: Annotated[int, Field(ge=1, le=4_194_304)] | Literal["all"] = 64
    """What is kept of a `step` teacher's next-token distribution at each position, in its stored
    outputs: its k most likely tokens (their log-probabilities at `temperature`, and the mass of the
    rest as one bucket), or `all` of it. The distillation term is the KL over those k tokens and
    the bucket, which cannot see how the rest is spread: at k = 64 a peaked teacher's term moves by
    about 1e-4, a flat one's by much more (tests/test_teacher.py measures both). `all` (or a k at
    least the vocabulary) is exact, at 2 bytes per vocabulary entry per token stored (k = 64: 396
    bytes per token). Live teachers (`path`, `hub`) always give the whole distribution."""

    windows: int | None = Field(None, ge=1, le=1 << 32)
    """The first this many windows of `seq_len` tokens of each dataset's train split: what a `step`
    teacher's stored outputs cover, and what the student draws its sequences from (whole
    windows, by index). Default: every window of the split. Fewer windows cost fewer teacher
    forwards; a student that reads more sequences than there are windows sees some again."""

    @field_validator("top_k", mode="wrap")
    @classmethod
    def _k_or_all(cls, value: Any, handler: Any) -> Any:
        try:  # one message for the union, not one per member
            return handler(value)
        except ValueError:
            raise ValueError("a whole number from 1 to 4,194,304, or `all` (the whole distribution)") from None


class Stage(Spec):
    name: Name
    """Label of the stage (e.g. foundation, reasoning, advanced)."""
    datasets: dict[Name, Weight] = Field(min_length=1)
    """Datasets of this stage with their mixture weights (tokenized with the step's tokenizer)."""
    steps: int = Field(ge=1, le=MAX_STEPS)
    """Optimizer steps of this stage."""
    seq_len: int | None = Field(None, ge=2, le=MAX_POSITIONS)
    """Sequence length of this stage; the step's `seq_len` when absent."""


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Lora(Spec):
    r: int = Field(ge=1, le=65_536)
    """Rank of every adapter: each target `W` (out × in) gets `B` (out × r, starting at zero) and
    `A` (r × in, drawn from the step's seed), and learns `W + (alpha / r) · B · A`."""
    alpha: float = Field(16.0, gt=0)
    """Scale of the adapters' update, as `alpha / r` (PEFT's `lora_alpha`)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on each adapter's input while training (PEFT's `lora_dropout`); 0 for none."""
    targets: tuple[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], ...] = Field(
        LORA_TARGETS, min_length=1, json_schema_extra=UNORDERED)
    """Linear layers of every decoder layer that get an adapter, by module name (llama, qwen2
    and mistral: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj). A set: its
    order is not part of the key."""


class Distributed(Spec):
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """`ddp`: every process holds the whole model and the gradients are averaged
    (DistributedDataParallel); `fsdp`: parameters, gradients and optimizer state are sharded
    over the processes (FSDP2's `fully_shard`, per decoder layer and the whole model)."""
    nproc_per_node: int = Field(ge=1, le=1024)
    """Processes on each machine, one per GPU on CUDA (gloo processes on the CPU)."""
    nnodes: int = Field(1, ge=1, le=4096)
    """Machines; with more than one, torchrun meets the others at `MASTER_ADDR:MASTER_PORT`, and
    each machine runs `doit` with its own `NODE_RANK` (0 on the one whose store keeps the entry)."""

    def world(self) -> int:
        return self.nproc_per_node * self.nnodes


class MlflowTracking(Spec):
    uri: str | None = Field(None, min_length=1)
    """Where the runs go: a tracking URI as MLflow takes it (`sqlite:////abs/path/mlflow.db`,
    `http://host:5000` for an MLflow server), or a path under `build/` of a SQLite database
    file, made on first use (`build/mlflow.db`). Default: the `MLFLOW_TRACKING_URI` environment
    variable, else `build/mlflow.db`."""
    experiment: str | None = Field(None, min_length=1, max_length=256)
    """The MLflow experiment, made on first use. Default: the pipeline's name (shared by its variants)."""

    @field_validator("uri")
    @classmethod
    def _inside_build(cls, uri: str | None) -> str | None:
        if uri is None or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
            return uri
        parts = uri.replace("\\", "/").split("/")
        if parts[0] != "build" or len(parts) < 2 or ".." in parts or not parts[-1]:
            raise ValueError("a path under build/ of a SQLite database file (a spec writes nowhere else), such as "
                             "build/mlflow.db, or a tracking URI such as sqlite:////abs/path/mlflow.db")
        return uri


class Tracking(Spec):
    mlflow: MlflowTracking | None = None
    """Log the metrics, parameters and tags to MLflow as well: one run per train step, tagged
    `ingot.step` (the step's name) and `ingot.key` (its content key). `{}` takes every default."""


class TrainStep(Step):
    kind: Literal["train"]
    """Train a model: pretrain, supervised fine-tuning or distillation."""
    model: str | None = ref("model", None)
    """Start from a fresh, seeded initialization of this model manifest..."""
    init: str | None = ref("step", None)
    """...or from the weights of an init or train step (the model comes with them)."""
    tokenizer: str = ref("step")
    """The tokenizer step the model reads."""
    data: str | None = ref("dataset", None)
    """The dataset to train on; or give `stages` for a curriculum."""
    stages: tuple[Stage, ...] = ()
    """Curriculum: ordered stages, each with its own dataset mixture and length."""
    objective: Literal["pretrain", "sft", "distill"] = "pretrain"
    """What to learn: next tokens (`pretrain`), responses only (`sft`), or teachers (`distill`)."""
    distill: Distill | None = None
    """Teachers, temperature, alpha and phases; required by `objective: distill`."""
    chat_template: str | None = Field(None, json_schema_extra=UNKEYED)
    """Jinja chat template (relative to the project root) that renders the records of
    instruction/response datasets before tokenizing; its path and contents enter the key of
    the tokens it makes, and through them this step's. Default: the tokenizer's own template
    (`@tokenizer`) when the tokenizer is a pretrained or loaded one, else
    specs/templates/chat.jinja."""
    max_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    """Optimizer steps; may be left out when stages or phases give the length."""
    epochs: float | None = Field(None, gt=0, le=1_000_000)
    """Or: passes over the train split, each epoch its tokens / (batch_size · grad_accum · seq_len)
    optimizer steps, rounded up; worked out from the tokenized data, so only with `data:`."""
    batch_size: int = Field(8, ge=1, le=MAX_BATCH)
    """Sequences per micro-batch."""
    grad_accum: int = Field(1, ge=1, le=MAX_BATCH)
    """Micro-batches accumulated per optimizer step."""
    seq_len: int = Field(128, ge=2, le=MAX_POSITIONS)
    """Tokens per training sequence; at most the model's max_positions."""
    clip: float | None = Field(1.0, gt=0)
    """Clip the gradient norm to this; no clipping when absent."""
    optimizer: Optimizer = Optimizer()
    """The optimizer (AdamW unless `kind` says otherwise), its learning rate and settings, and
    Grokfast's filter and QK-clip on top of it."""
    schedule: Schedule = Schedule()
    """Learning-rate schedule."""
    eval: Evaluation = Evaluation()
    """Validation cadence."""
    checkpoints: Checkpoints = Checkpoints()
    """Checkpoint cadence and retention."""
    early_stopping: EarlyStopping | None = None
    """Stop when validation loss stops improving; never when absent."""
    seed: int = Field(0, ge=0, le=MAX_SEED)
    """Seed of initialization, data order and every other random draw."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Training precision: float32, or bfloat16 autocast where the device supports it."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` is CUDA when present, else the CPU."""
    lora: Lora | None = None
    """Fine-tune through LoRA adapters (peft) instead of every weight: the weights of `init` stay
    frozen and only the adapters train. The step writes the merged model (model.safetensors,
    so every other step reads it as any trained model) and the adapter (adapter_model.safetensors,
    adapter_config.json). Needs `init:`."""
    quantize_base: Literal["nf4"] | None = None
    """QLoRA: hold the frozen base in 4-bit NF4 (bitsandbytes; double quantization, bfloat16
    compute) while the adapters train. Needs `lora:` and a CUDA GPU; the merged model is the
    unquantized base plus the adapters."""
    distributed: Distributed | None = None
    """Train in several processes under torchrun: DDP or FSDP, `nproc_per_node` on each of
    `nnodes` machines (gloo on the CPU, NCCL on CUDA). Each micro-batch of `batch_size`
    sequences is split evenly over the processes, so the global batch, and the losses, stay
    those of one process. Part of the key: a world size sums in another order."""
    compile: bool = False
    """Compile the model with `torch.compile` before training (CUDA: faster steps after a warm-up
    compile; its kernels round differently, so it is part of the key)."""
    tracking: Tracking | None = Field(None, json_schema_extra=UNKEYED)
    """Experiment trackers beside TensorBoard, whose event files every train step writes into its
    entry (`tensorboard/<step>/`): `{mlflow: {...}}`. Never part of the key: where the numbers
    are sent changes nothing that is trained."""

    def summary(self) -> str:
        start = f"model '{self.model}'" if self.model else f"'{self.init}'"
        length = f"{self.epochs:g} epochs" if self.epochs is not None else f"{self.total_steps()} steps"
        return f"{self.objective} of {start}, {length}"

    def total_steps(self) -> int | None:
        if self.max_steps is not None:
            return self.max_steps
        if self.stages:
            return sum(s.steps for s in self.stages)
        if self.distill is not None:
            return sum(p.steps for p in self.distill.phases)
        return None


GgufTypeName = Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0",
                       "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k"]


class Export(Step):
    kind: Literal["export"]
    """Export trained weights as a Hugging Face model folder or as GGUF files for llama.cpp."""
    model: str = ref("step")
    """The train or init step whose weights to export."""
    format: Literal["hf", "gguf"] = "hf"
    """`hf`: model.safetensors, config.json, generation_config.json and the tokenizer files.
    `gguf`: one `model-TYPE.gguf` per entry of `types`, tokenizer and chat template embedded."""
    adapter: bool = False
    """Write the LoRA adapter of `model` (a train step with `lora:`) instead of the merged model:
    with `hf`, a PEFT folder (adapter_config.json, adapter_model.safetensors and the tokenizer
    files) that `PeftModel.from_pretrained` loads over the base; with `gguf`, one llama.cpp LoRA
    adapter `adapter-TYPE.gguf` per type (f32, f16, bf16 or q8_0), applied over a GGUF file of
    the base."""
    types: tuple[GgufTypeName, ...] | None = Field(None, json_schema_extra=UNORDERED)
    """`gguf` only: tensor types to write, one file each. f32, f16, bf16 and the legacy quants
    (q8_0, q5_1, q5_0, q4_1, q4_0) are written by gguf-py; the K-quants (q6_k, q5_k_m, q4_k_m,
    q3_k_m, q2_k) by llama.cpp's quantizer (the llama-cpp-python extra). Default: f16. Their
    order changes no file, so it is not part of the key."""
    display_name: str | None = None
    """`gguf` only: `general.name`, the name llama.cpp shows; default: the model manifest's name."""
    strict: bool = False
    """`gguf` only: refuse (at compile time) a type that some matrix cannot take, instead of
    warning and letting that matrix fall back to another type."""
    chat_template: str | None = None
    """Jinja chat template (relative to the project root): chat_template.jinja, or the GGUF
    `tokenizer.chat_template`; `@tokenizer` for the tokenizer's own. Default: the tokenizer's own
    when it is a pretrained or loaded one, else specs/templates/chat.jinja."""
    max_new_tokens: int = Field(128, ge=1, le=MAX_POSITIONS)
    """`generation_config.json`: default number of tokens to generate."""
    temperature: float = Field(0.8, ge=0)
    """Default sampling temperature (0 for greedy): `generation_config.json`, or the GGUF
    `general.sampling.temp`."""
    top_p: float = Field(0.95, gt=0, le=1)
    """Default nucleus sampling threshold: `generation_config.json`, or `general.sampling.top_p`."""

    def gguf_types(self) -> tuple[str, ...]:
        return self.types or ("f16",)

    def builder(self) -> str:
        return "gguf" if self.format == "gguf" else "export"

    def summary(self) -> str:
        what = "LoRA adapter" if self.adapter else "GGUF files"
        if self.format == "gguf":
            return f"{what} ({', '.join(self.gguf_types())}) of '{self.model}'"
        return f"{'PEFT adapter' if self.adapter else 'Hugging Face'} folder of '{self.model}'"


class Prompt(Spec):
    name: Name
    """Short name of the prompt in tables."""
    text: str = Field(min_length=1)
    """The user message; rendered with the chat template, with the assistant's turn opened."""


DEFAULT_PROMPTS = (
    Prompt(name="greeting", text="Hello! Who are you?"),
    Prompt(name="tool-routing", text="I need tomorrow's weather in Paris. Which tool should I call: search, "
                                     "calculator or weather? Answer with the tool name."),
    Prompt(name="code", text="Write a Python function that returns the squares of a list of numbers."),
    Prompt(name="factual", text="What does the len() function return in Python?"),
    Prompt(name="explanation", text="Explain what a Python generator is and when to use one."),
)


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Endpoint(Spec):
    url: str = Field(pattern=r"^https?://[^\s/]+(/\S*)?$", json_schema_extra=UNKEYED)
    """Base URL of an OpenAI-compatible chat API, the part before `/chat/completions`: e.g.
    `https://api.openai.com/v1`, or `http://127.0.0.1:8080/v1` for a local llama.cpp or vLLM
    server. Not part of any key: where a model is served does not change what it answers, its
    `model` name does."""
    model: str = Field(min_length=1, max_length=256)
    """The model's name in the requests. It keys every answer cached (build/cache/llm/): give each
    distinct model, or version of one, its own name."""
    key_env: str | None = Field(None, pattern=ENV_NAME, json_schema_extra=UNKEYED)
    """Name of the environment variable holding the API key (sent as a bearer token), e.g.
    `OPENAI_API_KEY`; none for a local server that needs no key. The key itself is never written
    to a manifest, a key or the cache."""
    max_tokens: int = Field(512, ge=1, le=MAX_POSITIONS)
    """Most tokens one answer may have (greedy answers: temperature 0)."""
    concurrency: int = Field(4, ge=1, le=256, json_schema_extra=UNKEYED)
    """Requests in flight at once."""
    retries: int = Field(4, ge=0, le=20, json_schema_extra=UNKEYED)
    """Retries of a request answered 408, 409, 429 or 5xx, or whose connection failed or timed
    out, with exponential backoff (0.5 s doubling up to 8 s, or the server's `Retry-After`);
    after the last one the step fails naming the URL and the status."""
    timeout: float = Field(120, gt=0, le=3600, json_schema_extra=UNKEYED)
    """Seconds one request may take."""


class Judge(Endpoint):
    max_tokens: int = Field(256, ge=1, le=MAX_POSITIONS)
    """Most tokens of a verdict (its JSON, the reason included)."""
    template: str = "specs/templates/judge.jinja"
    """Jinja rubric (relative to the project root) rendered, in Jinja's sandbox, into the judge's
    one message with `instruction`, `answer` (the model's), `reference` (the reference model's)
    and `expected` (the record's response). It asks for the JSON object `{"verdict": "A" | "B" |
    "tie", "reason": "..."}`, A being the model's answer and B the reference's. Its files enter
    the step's key and the cache key of every verdict."""
    response_format: Literal["json_object", "json_schema", "none"] = "json_object"
    """How the verdict's JSON shape is asked of the server: `json_object` with its `schema`
    (llama.cpp's servers then constrain the output to it, so even a tiny judge answers JSON),
    `json_schema` (OpenAI's structured outputs), `none` (only the rubric asks). A verdict that
    does not parse is counted as `unparseable`, never a failure of the step."""


class PromptSet(Spec):
    dataset: Name
    """A dataset of instruction/response records: each instruction is a prompt, its response what
    scoring compares the answer with (for `python`, the unit tests)."""
    split: Literal["all", "train", "validation"] = "all"
    """Records of this split (`all`: train then validation, in the dataset's order); `validation`
    when the model was trained on the same dataset."""
    limit: int | None = Field(None, ge=1, le=100_000_000)
    """The first this many records of the split; all of them when absent."""
    scoring: Literal["exact", "number", "python", "judge"]
    """How an answer is scored. `exact`: equal to the response once runs of whitespace are one
    space and the ends stripped. `number`: the final number of the answer equals the response's
    (numerically; see `pattern`). `python`: the answer's code (the first ```python block, or the
    whole answer) followed by the response's unit tests (`assert f(2) == 4` lines) passes, run in
    a sandboxed subprocess. `judge`: `judge` compares the answer with `reference`'s answer to the
    same instruction: a win, loss or tie."""
    pattern: str | None = Field(None, min_length=1)
    """`number` only: the regular expression (Python `re`) whose last match in a text is its
    final number (its first group, if it has groups); commas are removed before comparing.
    Default: the last number in the text, GSM8K style (`#### 72` or `... is 72.`)."""
    timeout: float = Field(10, gt=0, le=3600)
    """`python` only: wall-clock seconds one item's tests may run (and its CPU seconds) before
    the process group is killed; the item fails with `timeout`."""
    memory_mb: int = Field(1024, ge=64, le=1 << 20)
    """`python` only: address space an item's process may take, in MiB (RLIMIT_AS)."""
    judge: Judge | None = None
    """`judge` only: the OpenAI-compatible endpoint that gives each verdict."""
    reference: Endpoint | None = None
    """`judge` only: the OpenAI-compatible endpoint of the stronger model whose answer each of
    the model's is compared with. Its answers are cached by content: a later evaluate step of
    another model with the same prompts and reference asks it nothing."""


class EvaluateStep(Step):
    kind: Literal["evaluate"]
    """Measure trained weights: validation loss and perplexity, the same through llama.cpp for
    each GGUF file of an export, and a generation benchmark on a prompt set."""
    model: str = ref("step")
    """The train or init step whose weights to measure."""
    gguf: str | None = ref("step", None)
    """An export step with `format: gguf` of the same weights: each of its files is measured on
    the same tokens through llama.cpp (needs the llama.cpp extra): perplexity, KL divergence
    from the checkpoint's next-token distribution, and how often both pick the same top token."""
    max_kld: dict[GgufTypeName, Annotated[float, Field(gt=0)]] | None = None
    """A gate: GGUF type -> the largest mean KL divergence (nats per token) from the checkpoint
    it may have, e.g. `{q4_k_m: 0.05, q8_0: 0.002}`; each type must be a file of `gguf`. A type
    above its limit fails the step, naming every such type. Not an input to the measurement,
    but it decides whether the step succeeds, so it is part of the key."""
    data: str | None = ref("dataset", None)
    """Dataset whose validation split is measured; default: the train step's `data`."""
    seq_len: int = Field(128, ge=2, le=MAX_POSITIONS)
    """Tokens per perplexity window; at most the model's max_positions."""
    windows: int = Field(16, ge=1, le=1_000_000)
    """Perplexity windows taken from the start of the validation split (fewer if it is shorter)."""
    prompts: tuple[Prompt, ...] = Field(DEFAULT_PROMPTS, min_length=1)
    """Prompt set of the generation benchmark."""
    max_new_tokens: int = Field(32, ge=1, le=MAX_POSITIONS)
    """Greedy generation stops after this many tokens, or at eos."""
    chat_template: str | None = None
    """Jinja chat template (relative to the project root) the prompts are rendered with; `@tokenizer`
    for the tokenizer's own. Default: the tokenizer's own when it is a pretrained or loaded one,
    else specs/templates/chat.jinja."""
    prompt_set: PromptSet | None = None
    """A prompt set scored answer by answer: each instruction of a dataset of instruction/response
    records generated greedily (the chat template, `max_new_tokens`) and scored by `scoring`;
    per-item results in the entry's `items.jsonl`, counts in its metrics."""

    def summary(self) -> str:
        gguf = f" and GGUF files of '{self.gguf}'" if self.gguf else ""
        scored = f", {self.prompt_set.scoring}-scored on '{self.prompt_set.dataset}'" if self.prompt_set else ""
        return f"perplexity and generation speed of '{self.model}'{gguf}{scored}"


class ReportStep(Step):
    kind: Literal["report"]
    """Render a training report (Markdown, HTML with plots, PNG plots) from built artifacts."""
    train: str = ref("step")
    """The train step reported on: its metrics, model, teachers and environment."""
    evaluate: str | None = ref("step", None)
    """An evaluate step of the same weights: perplexity, GGUF and generation tables."""
    exports: tuple[Annotated[str, Field(pattern=STEP_REF_PATTERN)], ...] = ()
    """Export steps whose files the report lists (size, SHA-256) and, for GGUF, tabulates."""
    compare: tuple[Annotated[str, Field(pattern=STEP_REF_PATTERN)], ...] = ()
    """Other train steps shown side by side with `train` (the variants of a pipeline, say
    `forge@memory.train`): their losses, tokens, time, parameters and last metrics in one table."""
    template: str = "specs/templates/training-report.md.jinja"
    """Jinja template of the Markdown report (relative to the project root), rendered in Jinja's
    sandbox with undefined variables as errors; the HTML version is made from its output."""
    loss_rows: int = Field(20, ge=2, le=200)
    """Rows of the text loss curve (the loss sampled evenly over the run)."""

    def summary(self) -> str:
        return f"training report of '{self.train}' from {self.template}"


AnyStep = Annotated[Union[TokenizerStep, PretrainedStep, InitStep, TrainStep, Export, EvaluateStep, ReportStep],
                    Field(discriminator="kind")]


class PipelineSpec(Manifest):
    kind: Literal["pipeline"]
    """Named steps, each producing one artifact."""
    default: bool = Field(True, json_schema_extra=UNKEYED)
    """Whether a plain `doit` builds this pipeline; `false` for one meant for a bigger machine."""
    steps: dict[Name, AnyStep] = Field(min_length=1)
    """Steps by name, in any order: the graph follows references, not the listing."""
    variants: dict[Name, dict[str, Any]] | None = Field(None, max_length=64, json_schema_extra=UNKEYED)
    """Variants of the pipeline by name, each an overlay of `steps:` merged over it as a
    profile's is (`{fast: {steps: {train: {seq_len: 64}}}}`). Each variant's steps are tasks
    `PIPELINE@VARIANT.STEP`, linked under build/PIPELINE@VARIANT/; a step that comes out the
    same in every variant (and reads only such steps) is one task `PIPELINE.STEP` that all
    share. The pipeline itself is built only as its variants."""

    @field_validator("variants")
    @classmethod
    def _steps_only(cls, value):
        for name, overlay in (value or {}).items():
            other = sorted(set(overlay) - {"steps"})
            if other:
                raise ValueError(f"variant '{name}' overrides {', '.join(map(repr, other))}: a variant overrides "
                                 "steps only (`variants: {NAME: {steps: {STEP: {FIELD: VALUE}}}}`)")
        return value


KINDS: dict[str, type[Manifest]] = {"dataset": DatasetSpec, "model": ModelSpec, "pipeline": PipelineSpec}
AnyManifest = Annotated[Union[DatasetSpec, ModelSpec, PipelineSpec], Field(discriminator="kind")]
# what the runner validates a plan's step as: the kinds people write, and one the compiler makes
BuiltStep = Annotated[Union[TokenizerStep, PretrainedStep, InitStep, TrainStep, Export, EvaluateStep, ReportStep,
                            TeacherOutputsStep], Field(discriminator="kind")]
STEP_ADAPTER = TypeAdapter(BuiltStep)


def json_schema() -> dict:
    schema = TypeAdapter(AnyManifest).json_schema()
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = "Ingot manifest"
    return schema
