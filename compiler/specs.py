"""The manifest language: pydantic models for datasets, models and pipelines.

Pure data, no I/O and no torch. Every field has a docstring (it becomes the JSON
Schema description editors show). Fields marked `UNKEYED` only describe or check
and never enter a content key; fields marked with `ref(...)` name another
manifest or step and are resolved by `compiler.project`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
STEP_REF_PATTERN = r"^([a-z0-9][a-z0-9_-]*\.)?[a-z0-9][a-z0-9_-]*$"
UNKEYED = {"keyed": False}

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]


def ref(kind: Literal["dataset", "model", "step"]) -> Any:
    """A field that names a dataset or model manifest, or a step (`step` or `pipeline.step`)."""
    pattern = STEP_REF_PATTERN if kind == "step" else NAME_PATTERN
    return Field(pattern=pattern, json_schema_extra={"ref": kind})


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Manifest(Spec):
    name: Name = Field(json_schema_extra=UNKEYED)
    """Unique name of this manifest among those of its kind; other manifests refer to it by it."""
    description: str = Field("", json_schema_extra=UNKEYED)
    """Free text for people. Never part of a content key."""
    profiles: dict[Name, dict[str, Any]] = Field(default_factory=dict, json_schema_extra=UNKEYED)
    """Overlays by profile name, merged over this manifest when `doit profile=NAME` runs."""


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


class FieldMap(Spec):
    text: str = "text"
    """Field of each JSONL record that holds the document text."""


class FilesSource(Spec):
    type: Literal["files"]
    """Local files matched by a glob."""
    glob: str = Field(min_length=1)
    """Glob relative to the project root, e.g. `data/*.jsonl`. A `.txt` file is one document,
    a `.jsonl` file one document per line."""
    fields: FieldMap = FieldMap()
    """Where each JSONL record keeps its text."""


Source = Annotated[Union[PydocsSource, FilesSource], Field(discriminator="type")]


class Filters(Spec):
    min_chars: int = Field(1, ge=0)
    """Drop documents shorter than this many characters (after normalization)."""
    max_chars: int | None = Field(None, ge=1)
    """Drop documents longer than this many characters; no limit when absent."""


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
    split: Split = Split()
    """The deterministic train/validation split."""
    shard_docs: int = Field(10_000, ge=1)
    """Documents per output shard file."""

    def summary(self) -> str:
        kinds = ", ".join(s.glob if isinstance(s, FilesSource) else "python docs" for s in self.sources)
        return f"documents from {kinds}; {self.dedup} dedup, {self.split.validation:.0%} validation"


# ---------------------------------------------------------------- models

class ModelSpec(Manifest):
    kind: Literal["model"]
    """A model architecture."""
    architecture: Literal["llama"] = "llama"
    """Model family; Llama (RMSNorm, RoPE, SwiGLU, grouped-query attention) for now."""
    hidden_size: int = Field(ge=1)
    """Width of the residual stream."""
    intermediate_size: int = Field(ge=1)
    """Width of the SwiGLU feed-forward layer."""
    layers: int = Field(ge=1)
    """Number of decoder layers."""
    heads: int = Field(ge=1)
    """Attention (query) heads per layer."""
    kv_heads: int | None = Field(None, ge=1)
    """Key/value heads per layer (grouped-query attention); defaults to `heads`."""
    head_dim: int | None = Field(None, ge=1)
    """Width of one attention head; defaults to `hidden_size / heads`."""
    vocab_size: int = Field(ge=1)
    """Rows of the embedding and the LM head; at least the paired tokenizer's vocabulary."""
    max_positions: int = Field(2048, ge=1)
    """Longest sequence the model is built for (RoPE positions)."""
    rope_theta: float = Field(10_000.0, gt=0)
    """RoPE base frequency."""
    rms_norm_eps: float = Field(1e-6, gt=0)
    """Epsilon of every RMSNorm."""
    tie_embeddings: bool = False
    """Share the input embedding with the LM head."""
    expect_params: int | None = Field(None, ge=1, json_schema_extra=UNKEYED)
    """When given, compiling fails unless the derived parameter count equals it."""

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


class SpecialTokens(Spec):
    bos: str = "<s>"
    """Beginning-of-sequence token."""
    eos: str = "</s>"
    """End-of-sequence token; also separates packed documents."""
    unk: str = "<unk>"
    """Unknown token (byte-level BPE never needs it, but loaders expect one)."""
    pad: str = "<pad>"
    """Padding token."""


class TokenizerStep(Step):
    kind: Literal["tokenizer"]
    """Train a byte-level BPE tokenizer on a dataset's train split."""
    dataset: str = ref("dataset")
    """Name of the dataset manifest to train on."""
    vocab_size: int = Field(ge=260, le=1_000_000)
    """Vocabulary size including the 256 byte symbols and the special tokens."""
    min_frequency: int = Field(2, ge=1)
    """A pair must occur this often to be merged."""
    special_tokens: SpecialTokens = SpecialTokens()
    """Special tokens, given the first ids in this order: bos, eos, unk, pad."""
    add_bos_token: bool = False
    """Whether encoding prepends the bos token."""
    max_length: int = Field(2048, ge=1)
    """`model_max_length` written to `tokenizer_config.json`."""

    def summary(self) -> str:
        return f"byte-level BPE of {self.vocab_size:,} tokens trained on dataset '{self.dataset}'"


class InitStep(Step):
    kind: Literal["init"]
    """Randomly initialize a model for a tokenizer: the starting point of training."""
    model: str = ref("model")
    """Name of the model manifest."""
    tokenizer: str = ref("step")
    """The tokenizer step the model is paired with (`step` or `pipeline.step`)."""
    seed: int = Field(0, ge=0)
    """Seed of the initialization."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Precision of the saved weights."""

    def summary(self) -> str:
        return f"{self.dtype} weights of model '{self.model}' initialized with seed {self.seed}"


AnyStep = Annotated[Union[TokenizerStep, InitStep], Field(discriminator="kind")]


class PipelineSpec(Manifest):
    kind: Literal["pipeline"]
    """Named steps, each producing one artifact."""
    default: bool = Field(True, json_schema_extra=UNKEYED)
    """Whether a plain `doit` builds this pipeline; `false` for one meant for a bigger machine."""
    steps: dict[Name, AnyStep] = Field(min_length=1)
    """Steps by name, in any order: the graph follows references, not the listing."""


KINDS: dict[str, type[Manifest]] = {"dataset": DatasetSpec, "model": ModelSpec, "pipeline": PipelineSpec}
AnyManifest = Annotated[Union[DatasetSpec, ModelSpec, PipelineSpec], Field(discriminator="kind")]
STEP_ADAPTER = TypeAdapter(AnyStep)


def json_schema() -> dict:
    schema = TypeAdapter(AnyManifest).json_schema()
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = "Ingot manifest"
    return schema
