"""Export builder, through a real project: what transformers makes of the Hugging Face folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

from compiler.specs import Export
from compiler.inputs import MODEL, TOKENIZER
from conftest import REPO, code_project, TINY_SPECS, Project, ran, tiny_corpus
from targets import BuildError, Job
from targets import export as export_builder

pytestmark = pytest.mark.slow  # `doit` builds a model and checks a template in a fresh interpreter

FILES = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}
EXPORT = "  hf:\n    kind: export\n    model: init\n"
CHAT = [{"role": "user", "content": "What does len() return?"},
        {"role": "assistant", "content": "The number of items."},
        {"role": "user", "content": "And for a dict?"}]
RENDERED = ("<s><|user|>\nWhat does len() return?</s>\n<|assistant|>\nThe number of items.</s>\n"
            "<|user|>\nAnd for a dict?</s>\n")


def new_project(root: Path) -> Project:
    """The tiny project of conftest, the default chat template, and an export of its init step."""
    p = code_project(root)
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    for rel, text in TINY_SPECS.items():
        p.write(rel, text)
    (root / "specs" / "templates").mkdir()
    shutil.copy2(REPO / "specs" / "templates" / "chat.jinja", root / "specs" / "templates" / "chat.jinja")
    p.write("specs/pipelines/main.yaml", p.read("specs/pipelines/main.yaml") + EXPORT)
    return p


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    p = new_project(tmp_path_factory.mktemp("export") / "proj")
    assert ran(p.doit()) == ["dataset.docs", "main.tok", "main.init", "main.hf"]
    return p


@pytest.fixture(scope="module")
def main(project):
    return project.root / "build" / "main"


@pytest.fixture(scope="module")
def model(main):
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning while loading fails the test
        loaded, info = AutoModelForCausalLM.from_pretrained(main / "hf", output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    return loaded.eval()


@pytest.fixture(scope="module")
def tokenizer(main):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(main / "hf")


def test_exactly_the_hugging_face_files(main):
    entry = main / "hf"
    assert {p.name for p in entry.iterdir()} == FILES | {"manifest.json"}
    manifest = json.loads((entry / "manifest.json").read_text())
    assert set(manifest["outputs"]) == FILES
    assert sorted(manifest["inputs"]) == ["model", "tokenizer"]
    assert manifest["inputs"]["model"]["task"] == "main.init"
    assert manifest["inputs"]["tokenizer"]["task"] == "main.tok"


def test_files_are_their_inputs_unchanged(main, project):
    for name in ("model.safetensors", "config.json"):
        assert (main / "hf" / name).read_bytes() == (main / "init" / name).read_bytes(), name
    for name in ("tokenizer.json", "special_tokens_map.json"):
        assert (main / "hf" / name).read_bytes() == (main / "tok" / name).read_bytes(), name
    config, exported = (json.loads((main / d / "tokenizer_config.json").read_text()) for d in ("tok", "hf"))
    assert (config.pop("model_max_length"), exported.pop("model_max_length")) == (2048, 128)  # the model's context
    assert exported == config
    assert (main / "hf" / "chat_template.jinja").read_bytes() == (
        project.root / "specs" / "templates" / "chat.jinja").read_bytes()
    # the weights are shared with the init entry, not a second copy
    assert os.path.samefile(main / "hf" / "model.safetensors", main / "init" / "model.safetensors")


def test_logits_equal_the_saved_weights(main, model):
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_dict(json.loads((main / "init" / "config.json").read_text()))
    direct = LlamaForCausalLM(config)
    direct.load_state_dict(load_file(main / "init" / "model.safetensors"), strict=True)
    direct.eval()
    ids = torch.tensor([[0, 17, 250, 399, 45, 1], [0, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        expected, got = direct(ids).logits, model(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert torch.isfinite(got).all()


def test_generate_runs(model, tokenizer):
    import torch

    inputs = tokenizer("The function returns", return_tensors="pt")
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        greedy = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        again = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        torch.manual_seed(0)
        sampled = model.generate(**inputs, max_new_tokens=3)  # the folder's defaults: sampling
    assert greedy.shape == (1, n + 4)
    assert torch.equal(greedy, again)
    assert torch.equal(greedy[0, :n], inputs["input_ids"][0])
    assert n < sampled.shape[1] <= n + 3
    assert isinstance(tokenizer.decode(greedy[0, n:]), str)


def test_chat_template_renders_through_the_file(main, tokenizer):
    assert tokenizer.chat_template == (main / "hf" / "chat_template.jinja").read_text()
    assert tokenizer.apply_chat_template(CHAT, tokenize=False) == RENDERED
    prompt = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert prompt == RENDERED + "<|assistant|>\n"
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert ids.count(tokenizer.eos_token_id) == 3  # one per message, none for the open turn


def test_special_ids_agree_everywhere(main, model, tokenizer):
    generation = json.loads((main / "hf" / "generation_config.json").read_text())
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert ids == (0, 1, 3)
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == ids
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == ids
    gen = model.generation_config
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == ids
    assert model.config.vocab_size >= len(tokenizer)
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 128


def test_generation_config_is_the_steps_defaults(main, model):
    assert json.loads((main / "hf" / "generation_config.json").read_text()) == {
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 3,
        "max_new_tokens": 128, "do_sample": True, "temperature": 0.8, "top_p": 0.95}
    gen = model.generation_config
    assert (gen.max_new_tokens, gen.do_sample, gen.temperature, gen.top_p) == (128, True, 0.8, 0.95)


@pytest.mark.parametrize("temperature, expected", [
    (0.0, {"do_sample": False}),
    (1.3, {"do_sample": True, "temperature": 1.3, "top_p": 0.5}),
])
def test_generation_config_validates(main, temperature, expected):
    """Greedy (temperature 0) writes no sampling fields, which transformers would reject as unused."""
    from transformers import GenerationConfig

    config = json.loads((main / "init" / "config.json").read_text())
    spec = Export(kind="export", model="init", temperature=temperature, top_p=0.5, max_new_tokens=9)
    written = export_builder.generation_config(config, spec)
    assert written == {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 3, "max_new_tokens": 9, **expected}
    GenerationConfig(**written).validate(strict=True)


def test_editing_the_template_or_sampling_reruns_only_the_export(project):
    template, pipeline = project.read("specs/templates/chat.jinja"), project.read("specs/pipelines/main.yaml")
    entry = (project.root / "build" / "main" / "hf").resolve()
    project.write("specs/templates/chat.jinja", template + "{#- a note -#}\n")
    assert ran(project.doit()) == ["main.hf"]
    project.edit("specs/pipelines/main.yaml", "    model: init\n", "    model: init\n    temperature: 0\n")
    assert ran(project.doit()) == ["main.hf"]
    assert json.loads((project.root / "build" / "main" / "hf" / "generation_config.json").read_text())[
        "do_sample"] is False
    # reverting both edits brings back the first entry, by key, without building anything
    (project.root / "specs" / "templates" / "chat.jinja").write_text(template)
    (project.root / "specs" / "pipelines" / "main.yaml").write_text(pipeline)
    assert ran(project.doit()) == []
    assert (project.root / "build" / "main" / "hf").resolve() == entry


# ---------------------------------------------------------------- failures, through the builder directly

def export(tmp_path: Path, main: Path, model: Path | None = None, template: str | None = None) -> tuple[Path, dict]:
    rel = "chat.jinja"
    (tmp_path / rel).write_text(template if template is not None else (main / "hf" / "chat_template.jinja").read_text())
    out = Path(tempfile.mkdtemp(dir=tmp_path))
    spec = Export(kind="export", model="init", chat_template=rel)
    return out, export_builder.build(Job("main.hf", spec, out, root=tmp_path,
                                         inputs={MODEL: model or main / "init", TOKENIZER: main / "tok"}))


def weights_copy(tmp_path: Path, main: Path) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copyfile(main / "init" / name, folder / name)
    return folder


def test_direct_build_writes_the_same_folder(main, tmp_path):
    out, metrics = export(tmp_path, main)
    assert metrics == {"tensors": 21, "weights_bytes": (main / "init" / "model.safetensors").stat().st_size}
    assert {p.name for p in out.iterdir()} == FILES
    for name in FILES:
        assert (out / name).read_bytes() == (main / "hf" / name).read_bytes(), name


def test_a_broken_template_is_a_build_error(main, tmp_path):
    with pytest.raises(BuildError) as exc:
        export(tmp_path, main, template="{% for message in messages %}{{ message['content'] }}")
    assert str(exc.value) == ("chat template chat.jinja: TemplateSyntaxError: Unexpected end of template. "
                              "Jinja was looking for the following tags: 'endfor' or 'else'. "
                              "The innermost block that needs to be closed is 'for'.")


def test_truncated_weights_are_a_build_error(main, tmp_path):
    folder = weights_copy(tmp_path, main)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-4])
    with pytest.raises(BuildError) as exc:
        export(tmp_path, main, model=folder)
    assert str(exc.value) == (f"{folder / 'model.safetensors'}: {len(data) - 4:,} bytes, but its header "
                              f"describes {len(data):,} (truncated or corrupt)")
    (folder / "model.safetensors").write_bytes(b"\x80\x04 a pickle, say")
    with pytest.raises(BuildError, match="not a safetensors file"):
        export(tmp_path, main, model=folder)


def test_weights_of_another_tokenizer_are_a_build_error(main, tmp_path):
    folder = weights_copy(tmp_path, main)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": 2, "pad_token_id": 0}))
    with pytest.raises(BuildError) as exc:
        export(tmp_path, main, model=folder)
    assert str(exc.value) == ("the weights and the tokenizer disagree on special token ids (eos 2 in config.json "
                              "but 1 in the tokenizer, pad 0 in config.json but 3 in the tokenizer); "
                              "export a model with the tokenizer it was trained with")


def test_a_config_that_does_not_describe_the_weights_is_a_build_error(main, tmp_path):
    folder = weights_copy(tmp_path, main)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 300}))
    with pytest.raises(BuildError) as exc:
        export(tmp_path, main, model=folder)
    assert str(exc.value) == (f"{folder / 'model.safetensors'}: embedding of shape [512, 32], "
                              "but config.json says [300, 32] (vocab_size, hidden_size)")
