"""Plug-in architectures: a model manifest's `architecture: module:PATH:CLASS`, built, trained, saved,
loaded and exported through a small interface, so that a torch module of the project trains wherever a
Llama does (pretraining, distillation, curriculum, checkpoints and exact resume, evaluation).

The interface. CLASS, defined in the project file PATH (loaded by targets/plugins.py: the project root
is on `sys.path`, so the file may import its neighbours; nothing of Ingot needs importing), is a
`torch.nn.Module` subclass with

* `@classmethod from_config(cls, config: dict) -> CLASS`: the module, its weights initialized. The train
  builder seeds torch with the step's `seed` just before, so the same seed gives the same weights.
  `config` is what the step's `config.json` holds (`config_of`): `architecture` (the reference),
  `ingot_plugin: true`, the manifest's base fields under their manifest names (`hidden_size`,
  `intermediate_size`, `layers`, `heads`, `kv_heads`, `head_dim`, `vocab_size`, `max_positions`,
  `rope_theta`, `rms_norm_eps`, `tie_embeddings`), `options` (the manifest's `options:`, a dict of
  numbers, booleans and strings: the plug-in's own hyperparameters, to check and to default),
  the tokenizer's `bos_token_id`, `eos_token_id`, `pad_token_id` (None where it has none) and
  `dtype`. A key the plug-in does not use it ignores; an option it does not know it should refuse
  (raise ValueError naming it): the build fails with that message.
* `@classmethod parameter_count(cls, config: dict) -> int`: the exact number of parameters
  `from_config(config)` makes (each shared tensor once), by arithmetic on the config, without building
  anything. A count other than the built module's is a BuildError; so is a manifest's `expect_params`
  other than it.
* `forward(input_ids) -> output`: `input_ids` a LongTensor (batch × sequence); `output` any object
  or dict with `logits` (batch × sequence × vocab_size, position t predicting token t + 1, seeing no
  later position), optionally `aux_loss` (a scalar tensor the train step adds to its loss, e.g. a
  ponder cost) and `metrics` (name -> scalar tensor or number, e.g. mean halting steps: averaged over
  the step's micro-batches into the metrics log). Called positionally, in train and in eval mode.
* optionally `blocks() -> list[nn.Module]`: the repeated blocks that FSDP shards one by one (`distributed:
  {strategy: fsdp}`); without it the whole module is one unit.
* optionally `export_hf(self, folder)`: write a Hugging Face folder transformers loads without remote
  code: `config.json` (of an architecture transformers has, e.g. when the plug-in is a Llama at heart)
  and `model.safetensors`, which the export step keeps, adding the tokenizer's files, the chat
  template and `generation_config.json`; and `export_gguf(self, folder, files, metadata)`: write each
  GGUF file of `files` (type name -> file name, e.g. `{"f16": "model-f16.gguf"}`), with the key-values
  of `metadata` (`general.name`, `general.type` and the tokenizer's `tokenizer.ggml.*`, as gguf-py
  names them) and a `general.file_type`. Each is called on the module with the trained weights, in
  eval mode and without gradients, with an empty folder of its own. An export step of a model whose
  class (or a base class in its file) does not define the method is refused at compile time.

What Ingot does with it. The weights are the module's own `state_dict()`, saved as safetensors (a
tensor held under two names, as a tied head, once: under its first name); `config.json` is the
config above, so a weights entry names its plug-in and the code is read from the project when the
entry is loaded again (`init:`, a teacher, an evaluate or export step). The metrics log of a train
step of a plug-in has two more fields per step: `aux_loss` (the mean over micro-batches, None when the
plug-in returns none) and `aux` (the metrics, name -> mean over micro-batches).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from targets import BuildError, plugins

PLUGIN = "ingot_plugin"  # the config.json key that marks a plug-in's weights entry
BASE = ("hidden_size", "intermediate_size", "layers", "heads", "kv_heads", "head_dim", "vocab_size", "max_positions",
        "rope_theta", "rms_norm_eps", "tie_embeddings")
FORM = "return an object or dict with `logits`, and optionally `aux_loss` and `metrics`"


def is_plugin(config: dict | None) -> bool:
    """Whether a weights entry's config.json is a plug-in's."""
    return isinstance(config, dict) and config.get(PLUGIN) is True


def config_of(model, ids: dict[str, int | None], dtype: str = "float32") -> dict:
    """The config a plug-in is built from, and its weights entry's config.json: see the module's doc."""
    return {"architecture": model.architecture, PLUGIN: True, **{f: getattr(model, f) for f in BASE},
            "options": dict(model.options), "bos_token_id": ids.get("bos"), "eos_token_id": ids.get("eos"),
            "pad_token_id": ids.get("pad"), "dtype": dtype}


def what_of(config: dict) -> str:
    return f"plug-in {config['architecture']}"


# ---------------------------------------------------------------- building

def build_module(root: Path, config: dict, expect: int | None = None):
    """The plug-in module of `config`, float32, its count checked (and against `expect`, a manifest's
    `expect_params`); every way the plug-in fails the interface is a BuildError naming it."""
    import torch

    what = what_of(config)
    cls = plugins.load(root, config["architecture"], what)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise BuildError(f"{what}: {cls!r} is not a torch.nn.Module subclass: name the module's class")
    for method in ("from_config", "parameter_count"):
        if not callable(getattr(cls, method, None)):
            raise BuildError(f"{what}: class {cls.__name__} has no `{method}` classmethod, which plug-in "
                             f"architectures define (README: \"Plug-in architectures\")")
    count = _called(what, "parameter_count", cls.parameter_count, config)
    if not isinstance(count, int) or isinstance(count, bool):
        raise BuildError(f"{what}: parameter_count returned {count!r}, not an integer")
    model = _called(what, "from_config", cls.from_config, config)
    if not isinstance(model, torch.nn.Module):
        raise BuildError(f"{what}: from_config returned a {type(model).__name__}, not a torch.nn.Module")
    built = sum(p.numel() for p in model.parameters())
    if built != count:
        raise BuildError(f"{what}: parameter_count gives {count:,} parameters, but the module from_config built "
                         f"has {built:,}: make parameter_count count exactly what from_config builds")
    if expect is not None and expect != count:
        raise BuildError(f"{what}: the model has {count:,} parameters, and its manifest's expect_params says "
                         f"{expect:,}: if the architecture is right, set `expect_params: {count}`")
    return model.float()


def _called(what: str, name: str, fn, *args):
    """`fn(*args)`; an exception of the plug-in's is a BuildError quoting it (its traceback kept as the cause)."""
    try:
        return fn(*args)
    except Exception as exc:
        raise BuildError(f"{what}: {name} failed: {type(exc).__name__}: {exc}") from exc


def load(root: Path, folder: Path, what: str):
    """The plug-in module of the weights entry (or folder) `folder`, float32, with its weights; and its config."""
    from safetensors.torch import load_file

    config = json.loads((Path(folder) / "config.json").read_text())
    model = build_module(root, config)
    load_state(model, load_file(str(Path(folder) / "model.safetensors")), what)
    return model, config


# ---------------------------------------------------------------- state

def aliases(model) -> set[str]:
    """State-dict names of tensors the model also holds under an earlier name (a tied head): stored
    once, under the first name."""
    seen, out = set(), set()
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if id(tensor) in seen:
            out.add(name)
        seen.add(id(tensor))
    return out


def load_state(model, state: dict, what: str) -> None:
    """`state` into `model`, every tensor of it: only aliases may be missing, nothing may be unknown."""
    import torch

    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = set(missing) - aliases(model)
    if missing or unexpected:
        raise BuildError(f"{what} does not fit the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")


# ---------------------------------------------------------------- forward

@dataclass
class Output:
    logits: object              # torch.Tensor, batch × sequence × vocab
    aux_loss: object = None     # a scalar tensor, or None
    metrics: dict | None = None  # name -> scalar tensor or number


def forward(model, input_ids, what: str, vocab: int) -> Output:
    """The plug-in's forward on `input_ids`, its output checked: see `Output`."""
    out = model(input_ids)
    get = out.get if isinstance(out, dict) else lambda key: getattr(out, key, None)
    logits, aux, metrics = get("logits"), get("aux_loss"), get("metrics")
    shape = (*input_ids.shape, vocab)
    if getattr(logits, "shape", None) != shape:
        found = f"logits of shape {tuple(logits.shape)}" if hasattr(logits, "shape") else f"a {type(out).__name__} without logits"
        raise BuildError(f"{what}: forward returned {found}, where logits of shape {shape} (batch, sequence, "
                         f"vocab_size) belong: {FORM}")
    if aux is not None and getattr(aux, "numel", lambda: 0)() != 1:
        raise BuildError(f"{what}: forward's aux_loss is {type(aux).__name__} {getattr(aux, 'shape', '')}, where a "
                         f"scalar tensor belongs: {FORM}")
    if metrics is not None and not isinstance(metrics, dict):
        raise BuildError(f"{what}: forward's metrics is a {type(metrics).__name__}, where a dict of name -> scalar "
                         f"belongs: {FORM}")
    return Output(logits, aux.reshape(()) if aux is not None else None, metrics or {})


class AuxMeter:
    """A plug-in's aux loss and metrics over one optimizer step's micro-batches: summed as they come
    (tensors, no sync), averaged when the step's row is written, and cleared."""

    def __init__(self, what: str):
        self.what, self.names, self.loss, self.sums, self.count = what, None, False, None, 0

    def add(self, out: Output) -> None:
        import torch

        names = sorted(out.metrics)
        if self.names is not None and (names != self.names or (out.aux_loss is not None) != self.loss):
            raise BuildError(f"{self.what}: forward returned metrics {names} (aux_loss "
                             f"{'given' if out.aux_loss is not None else 'none'}) after {self.names} (aux_loss "
                             f"{'given' if self.loss else 'none'}) in the same step: return the same every call")
        self.names, self.loss, device = names, out.aux_loss is not None, out.logits.device
        values = [out.aux_loss if out.aux_loss is not None else 0.0] + [out.metrics[n] for n in names]
        row = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device).detach().reshape(())
                           for v in values])
        self.sums = row if self.sums is None else self.sums + row
        self.count += 1

    def row(self, parallel=None) -> dict:
        """`aux_loss` and `aux` of the step's metrics row (the means over its micro-batches, and over
        the processes of a step trained in several); None when no micro-batch ran."""
        if self.count == 0:
            return {"aux_loss": None, "aux": None}
        means = self.sums / self.count
        if parallel is not None:
            means = parallel.total(means) / parallel.world
        loss, *values = means.tolist()
        self.sums, self.count = None, 0
        return {"aux_loss": loss if self.loss else None, "aux": dict(zip(self.names, values))}


# ---------------------------------------------------------------- inference

def causal_lm(root: Path, folder: Path, dtype, what: str):
    """The model of a local weights folder in eval mode: a plug-in's (`load_inference`, float32),
    or transformers' `AutoModelForCausalLM` in `dtype`, without remote code."""
    config = Path(folder) / "config.json"
    if config.is_file() and is_plugin(json.loads(config.read_text())):
        return load_inference(root, folder, what)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=False,
                                                local_files_only=True).eval()


def load_inference(root: Path, folder: Path, what: str):
    """The plug-in of weights folder `folder` with its weights, in eval mode, behind the part of a
    transformers causal LM that teachers and the evaluate builder use (`Inference`)."""
    model, config = load(root, folder, what)
    return _inference_class()(model, config).eval()


@functools.cache
def _inference_class():
    import torch

    class Inference(torch.nn.Module):
        """`model(input_ids=..., use_cache=...)` returning `.logits`, `config.vocab_size` and
        `config.max_position_embeddings`, `num_parameters()` and a greedy `generate()` (the whole
        sequence again for each new token: a plug-in keeps no cache)."""

        def __init__(self, plugin, config: dict):
            super().__init__()
            self.plugin = plugin
            self.what = what_of(config)
            self.config = SimpleNamespace(vocab_size=config["vocab_size"], model_type=config["architecture"],
                                          max_position_embeddings=config["max_positions"],
                                          tie_word_embeddings=config["tie_embeddings"])

        def forward(self, input_ids=None, use_cache=None, **unused):  # transformers' keywords: no cache here
            return forward(self.plugin, input_ids, self.what, self.config.vocab_size)

        def num_parameters(self) -> int:
            return sum(p.numel() for p in self.parameters())

        @torch.no_grad()
        def generate(self, input_ids, max_new_tokens: int = 20, eos_token_id=None, pad_token_id=None,
                     streamer=None, do_sample: bool = False, **unused):
            if do_sample:
                raise BuildError(f"{self.what}: generation is greedy only")
            ids = input_ids
            if streamer is not None:
                streamer.put(ids.cpu())
            room = self.config.max_position_embeddings - ids.shape[1]
            for _ in range(max(0, min(max_new_tokens, room))):
                token = self(ids).logits[:, -1].argmax(dim=-1, keepdim=True)
                ids = torch.cat([ids, token], dim=1)
                if streamer is not None:
                    streamer.put(token.cpu())
                if eos_token_id is not None and int(token) == eos_token_id:
                    break
            if streamer is not None:
                streamer.end()
            return ids

    return Inference


# ---------------------------------------------------------------- export

def export_hf(root: Path, entry: Path, out: Path, what: str) -> dict:
    """The plug-in of weights entry `entry` writes its Hugging Face folder (`export_hf`), of which
    `config.json` and `model.safetensors` go into `out`; returns that config.json."""
    _export(root, entry, out, "export_hf", ("config.json", "model.safetensors"), (), what)
    return json.loads((out / "config.json").read_text())


def export_gguf(root: Path, entry: Path, out: Path, files: dict[str, str], metadata: dict, what: str) -> None:
    """The plug-in of weights entry `entry` writes the GGUF files `files` (type -> file name), which
    go into `out`."""
    _export(root, entry, out, "export_gguf", tuple(files.values()), (dict(files), dict(metadata)), what)


def _export(root: Path, entry: Path, out: Path, method: str, names: tuple[str, ...], args: tuple, what: str) -> None:
    """Call the loaded plug-in's exporter on a folder of its own, and move the files `names` from it
    into `out` (nothing else: a step's outputs are declared)."""
    import shutil
    import tempfile

    import torch

    model, config = load(root, entry, what)
    if not callable(getattr(model, method, None)):  # the compiler looked for it in the class's source
        raise BuildError(f"{what_of(config)}: class {type(model).__name__} has no `{method}` when it runs: define it "
                         "in the class")
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        with torch.no_grad():
            _called(what_of(config), method, getattr(model.eval(), method), Path(tmp), *args)
        absent = [n for n in names if not (Path(tmp) / n).is_file()]
        if absent:
            raise BuildError(f"{what_of(config)}: {method} wrote no {' or '.join(absent)}: it writes "
                             f"{', '.join(names)} into the folder it is given")
        for name in names:
            shutil.move(Path(tmp) / name, out / name)


def is_plugin_module(model) -> bool:
    """Whether `model` is a plug-in's: its class (or one FSDP made of it) comes from a module
    targets/plugins.py loaded."""
    return any(c.__module__.startswith("ingot_plugin.") for c in type(model).__mro__)


def blocks(model) -> list:
    """The blocks a plug-in asks FSDP to shard one by one (`blocks()`), or none."""
    method = getattr(model, "blocks", None)
    return list(method()) if callable(method) else []
