"""Tokens builder, through a real project: the streams decode back to the dataset's documents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compiler.specs import TokensStep
from compiler import graph, project
from conftest import TINY_SPECS, Project, add_qa, code_project, ran, tiny_corpus
from targets import BuildError, Job
from compiler.inputs import DATASET, TOKENIZER
from targets import tokens as tokens_builder

pytestmark = pytest.mark.slow  # `doit` builds a dataset and a tokenizer in a fresh interpreter

FILES = {"train.bin", "validation.bin", "tokens.json"}
# documents that would break a naive encoding: special tokens' text, bytes beyond ASCII
TRICKY = ["a document that says </s> in the middle and <s> and <pad> too",
          "</s>", "h\u00e9llo w\u00f6rld \u2014 \u65e5\u672c\u8a9e \U0001f916\U0001f44d\U0001f3fd, then  two spaces\t"]
TRAIN = "  {name}:\n    kind: train\n    model: tiny\n    tokenizer: tok\n    data: docs\n    max_steps: {steps}\n"
STUB_TRAIN = '''
"""A stand-in train builder: records which entries it was given."""
import json

OUTPUTS = ("inputs.json",)


def build(job):
    (job.out / "inputs.json").write_text(json.dumps({str(k): v.name for k, v in job.inputs.items()}))
'''


def new_project(root: Path) -> Project:
    """The tiny project of conftest (plus TRICKY documents) with two train steps reading docs with tok."""
    p = code_project(root)
    texts = tiny_corpus() + [t.ljust(20, ".") for t in TRICKY]  # min_chars 20
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts))
    for rel, text in TINY_SPECS.items():
        p.write(rel, text)
    p.write("specs/pipelines/main.yaml", p.read("specs/pipelines/main.yaml")
            + TRAIN.format(name="t", steps=1) + TRAIN.format(name="t2", steps=2))
    return p


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    p = new_project(tmp_path_factory.mktemp("tokens") / "proj")
    assert ran(p.doit("main.tok@docs")) == ["dataset.docs", "main.tok", "main.tok@docs"]
    return p.root / "build"


def documents(dataset: Path, split: str) -> list[str]:
    return [json.loads(line)["text"] for shard in sorted(dataset.glob(f"{split}-*.jsonl"))
            for line in shard.read_text(encoding="utf-8").splitlines()]


def segments(stream: np.ndarray, eos: int) -> list[list[int]]:
    """The eos-terminated runs of a stream, without their eos."""
    ends = np.flatnonzero(stream == eos)
    assert len(stream) == 0 or ends[-1] == len(stream) - 1, "the stream ends with eos"
    return [run[:-1].tolist() for run in np.split(stream, ends + 1)[:-1]]


@pytest.mark.parametrize("split", ["train", "validation"])
def test_stream_decodes_back_to_the_documents(built, split):
    from tokenizers import Tokenizer

    entry, meta = built / "main" / "tok@docs", json.loads((built / "main" / "tok@docs" / "tokens.json").read_text())
    tok = Tokenizer.from_file(str(built / "main" / "tok" / "tokenizer.json"))
    stream = np.memmap(entry / f"{split}.bin", dtype=meta["dtype"], mode="r")
    runs = segments(stream, meta["eos_id"])
    texts = documents(built / "dataset" / "docs", split)
    assert len(runs) == len(texts) > 0
    for ids, text in zip(runs, texts):  # in the dataset's order
        assert tok.decode(ids, skip_special_tokens=False) == text
    assert not set(stream.tolist()) & {meta["bos_id"], meta["pad_id"]}  # no special tokens but eos


def test_special_tokens_in_text_are_text(built):
    """A document that says "</s>" keeps the characters; eos only ever separates documents."""
    entry = built / "main" / "tok@docs"
    meta = json.loads((entry / "tokens.json").read_text())
    texts = documents(built / "dataset" / "docs", "train") + documents(built / "dataset" / "docs", "validation")
    assert sum("</s>" in t for t in texts) == 2
    eos = sum(int((np.fromfile(entry / f"{s}.bin", meta["dtype"]) == meta["eos_id"]).sum())
              for s in ("train", "validation"))
    assert eos == len(texts)


def test_tokens_json_counts_what_was_written(built):
    entry = built / "main" / "tok@docs"
    meta = json.loads((entry / "tokens.json").read_text())
    splits = {}
    for split in ("train", "validation"):
        stream = np.fromfile(entry / f"{split}.bin", dtype=np.uint16)
        splits[split] = {"documents": len(documents(built / "dataset" / "docs", split)), "tokens": len(stream)}
        assert (entry / f"{split}.bin").stat().st_size == 2 * len(stream)
    assert meta == {"dtype": "uint16", "eos_id": 1, "bos_id": 0, "pad_id": 3, "vocab_size": 400, "splits": splits}
    manifest = json.loads((entry / "manifest.json").read_text())
    assert set(manifest["outputs"]) == FILES
    assert {p.name for p in entry.iterdir()} == FILES | {"manifest.json"}
    assert manifest["metrics"] == meta
    assert sorted(manifest["inputs"]) == ["dataset", "tokenizer"]


@pytest.mark.parametrize("vocab, dtype", [(400, "uint16"), (65_535, "uint16"), (65_536, "uint16"),
                                          (65_537, "uint32"), (151_936, "uint32")])
def test_dtype_for(vocab, dtype):
    assert tokens_builder.dtype_for(vocab) == dtype


def word_tokenizer(entry: Path, words: int) -> None:
    """A tokenizer entry with a whitespace word-level vocabulary of `words` words and four specials."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<s>", "</s>", "<unk>", "<pad>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(specials)
    entry.mkdir()
    tok.save(str(entry / "tokenizer.json"))
    roles = dict(zip(("bos_token", "eos_token", "unk_token", "pad_token"), specials))
    (entry / "special_tokens_map.json").write_text(json.dumps(roles))


def dataset_entry(entry: Path, shards: dict[str, list[str]]) -> None:
    entry.mkdir()
    for name, texts in shards.items():
        (entry / name).write_text("".join(json.dumps({"id": "x", "text": t, "source": "s"}) + "\n" for t in texts))


def build(tmp_path: Path, dataset: Path, tokenizer: Path, name: str = "out") -> tuple[Path, dict]:
    out = tmp_path / name
    out.mkdir()
    spec = TokensStep(kind="tokens", dataset="docs", tokenizer="main.tok")
    return out, tokens_builder.build(Job("main.tok@docs", spec, out, inputs={DATASET: dataset, TOKENIZER: tokenizer}))


def test_a_large_vocabulary_is_written_as_uint32(tmp_path, monkeypatch):
    """70,000 words: ids above 65,535 survive, in order across shards and chunks."""
    word_tokenizer(tmp_path / "tok", 70_000)
    train = [" ".join(f"w{(i * 7919 + j * 104_729) % 70_000}" for j in range(i % 9 + 1)) for i in range(200)]
    dataset_entry(tmp_path / "data", {"train-00000.jsonl": train[:120], "train-00001.jsonl": train[120:],
                                      "validation-00000.jsonl": []})
    monkeypatch.setattr(tokens_builder, "CHUNK_CHARS", 100)  # many chunks
    out, meta = build(tmp_path, tmp_path / "data", tmp_path / "tok")
    assert meta == {"dtype": "uint32", "eos_id": 1, "bos_id": 0, "pad_id": 3, "vocab_size": 70_004,
                    "splits": {"train": {"documents": 200, "tokens": sum(len(t.split()) + 1 for t in train)},
                               "validation": {"documents": 0, "tokens": 0}}}
    stream = np.fromfile(out / "train.bin", dtype="<u4")
    assert stream.max() > 65_535
    assert [[f"w{i - 4}" for i in run] for run in segments(stream, 1)] == [t.split() for t in train]
    assert (out / "validation.bin").stat().st_size == 0
    monkeypatch.setattr(tokens_builder, "CHUNK_CHARS", 4 << 20)  # one chunk: the same bytes
    again, _ = build(tmp_path, tmp_path / "data", tmp_path / "tok", "again")
    assert (again / "train.bin").read_bytes() == (out / "train.bin").read_bytes()


def test_no_eos_in_the_vocabulary_is_a_build_error(tmp_path):
    word_tokenizer(tmp_path / "tok", 10)
    (tmp_path / "tok" / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|end|>"}))
    dataset_entry(tmp_path / "data", {"train-00000.jsonl": ["w1 w2"], "validation-00000.jsonl": []})
    with pytest.raises(BuildError) as exc:
        build(tmp_path, tmp_path / "data", tmp_path / "tok")
    assert str(exc.value) == ("the tokenizer has no eos token ('<|end|>' is not in its vocabulary), so documents "
                              "cannot be separated; give the tokenizer step `special_tokens: {eos: ...}`")


def test_a_bad_record_is_a_build_error(tmp_path):
    word_tokenizer(tmp_path / "tok", 10)
    dataset_entry(tmp_path / "data", {"train-00000.jsonl": ["w1 w2"], "validation-00000.jsonl": []})
    with open(tmp_path / "data" / "train-00000.jsonl", "a") as f:
        f.write('{"id": "y"}\n')
    with pytest.raises(BuildError) as exc:
        build(tmp_path, tmp_path / "data", tmp_path / "tok")
    assert str(exc.value) == "train-00000.jsonl, line 2: not a dataset record with a `text` field"


def test_train_steps_reading_one_pair_share_one_tokens_task(tmp_path):
    p = new_project(tmp_path / "proj")
    p.write("targets/train.py", STUB_TRAIN)
    listed = [line.split()[0] for line in p.doit("list").stdout.splitlines()]
    assert listed.count("main.tok@docs") == 1
    assert [t for t in listed if "@" in t] == ["main.tok@docs"]
    result = p.doit("main.t", "main.t2")
    assert sorted(ran(result)) == ["dataset.docs", "main.t", "main.t2", "main.tok", "main.tok@docs"]
    seen = [json.loads((p.root / "build" / "main" / t / "inputs.json").read_text()) for t in ("t", "t2")]
    assert seen[0] == seen[1]
    assert seen[0]["tokens.docs"] == (p.root / "build" / "main" / "tok@docs").resolve().name
    assert ran(p.doit("main.t", "main.t2")) == []


# ---------------------------------------------------------------- instruction/response records

SFT = "  s:\n    kind: train\n    model: tiny\n    tokenizer: tok\n    data: qa\n    objective: sft\n    max_steps: 1\n"


def chat_project(root: Path) -> Project:
    p = new_project(root)
    add_qa(p)
    p.write("specs/pipelines/main.yaml", p.read("specs/pipelines/main.yaml") + SFT)
    return p


@pytest.fixture(scope="module")
def chat_built(tmp_path_factory):
    p = chat_project(tmp_path_factory.mktemp("chat") / "proj")
    assert sorted(ran(p.doit("main.tok@qa"))) == ["dataset.docs", "dataset.qa", "main.tok", "main.tok@qa"]
    return p


def records(dataset: Path, split: str) -> list[dict]:
    return [json.loads(line) for shard in sorted(dataset.glob(f"{split}-*.jsonl"))
            for line in shard.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("split", ["train", "validation"])
def test_the_mask_covers_the_response_and_its_eos(chat_built, split):
    """Checked against transformers' own chat renderer: the masked-out tokens decode to the
    prompt (user turn and generation prompt), the masked-in ones to the rest of the conversation
    and the separating eos."""
    from tokenizers import Tokenizer
    from transformers.utils.chat_template_utils import render_jinja_template

    build = chat_built.root / "build"
    entry = build / "main" / "tok@qa"
    meta = json.loads((entry / "tokens.json").read_text())
    assert meta["mask"] is True
    assert {p.name for p in entry.iterdir()} == FILES | {"train.mask.bin", "validation.mask.bin", "manifest.json"}
    tok = Tokenizer.from_file(str(build / "main" / "tok" / "tokenizer.json"))
    stream = np.fromfile(entry / f"{split}.bin", dtype=meta["dtype"])
    mask = np.fromfile(entry / f"{split}.mask.bin", dtype=np.uint8)
    assert len(mask) == len(stream) == meta["splits"][split]["tokens"] and set(mask.tolist()) == {0, 1}
    starts = np.flatnonzero((mask[1:] == 0) & (mask[:-1] == 1)) + 1  # a record: zeros, then ones
    pairs = records(build / "dataset" / "qa", split)
    assert len(pairs) == meta["splits"][split]["documents"] == len(starts) + 1 > 0
    template = chat_built.read("specs/templates/chat.jinja")
    specials = {"bos_token": "<s>", "eos_token": "</s>"}
    for rec, ids, m in zip(pairs, np.split(stream, starts), np.split(mask, starts)):
        user = {"role": "user", "content": rec["instruction"]}
        chat = [user, {"role": "assistant", "content": rec["response"]}]
        prompt = render_jinja_template([[user]], chat_template=template, add_generation_prompt=True, **specials)[0][0]
        full = render_jinja_template([chat], chat_template=template, **specials)[0][0]
        assert full.startswith(prompt) and rec["response"] in full[len(prompt):]
        cut = int((m == 0).sum())
        assert m.tolist() == [0] * cut + [1] * (len(m) - cut)
        assert ids[-1] == meta["eos_id"]
        assert tok.decode(ids[:cut].tolist(), skip_special_tokens=False) == prompt
        assert tok.decode(ids[cut:].tolist(), skip_special_tokens=False) == full[len(prompt):] + "</s>"


def test_text_datasets_get_no_mask(chat_built):
    assert ran(chat_built.doit("main.tok@docs")) == ["main.tok@docs"]
    entry = chat_built.root / "build" / "main" / "tok@docs"
    assert {p.name for p in entry.iterdir()} == FILES | {"manifest.json"}
    assert "mask" not in json.loads((entry / "tokens.json").read_text())


def test_a_template_edit_rekeys_the_tokens_only(tmp_path):
    """The template is a source of the tokens step; the train step is keyed on what that step
    writes (its output digest), so it is re-keyed only if the tokens come out different."""
    p = chat_project(tmp_path / "proj")
    before = {t: plan.base for t, plan in graph.plans(project.load(p.root)).items()}
    p.write("specs/templates/chat.jinja", p.read("specs/templates/chat.jinja") + "{#- a note -#}\n")
    after = {t: plan.base for t, plan in graph.plans(project.load(p.root)).items()}
    assert sorted(t for t in before if before[t] != after[t]) == ["main.tok@qa"]
    assert "main.tok@docs" in before  # read by the text steps t and t2, whose keys stay


def test_a_prompt_that_is_no_token_prefix_is_a_build_error(tmp_path):
    """A generation prompt that ends inside what the response begins with cannot be masked."""
    word_tokenizer(tmp_path / "tok", 10)
    (tmp_path / "chat.jinja").write_text("{% for m in messages %}{{ m['content'] }} {% endfor %}"
                                         "{% if add_generation_prompt %}w2x{% endif %}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-00000.jsonl").write_text(json.dumps({"instruction": "w1", "response": "w2"}) + "\n")
    (tmp_path / "data" / "validation-00000.jsonl").write_text("")
    (tmp_path / "out").mkdir()
    spec = TokensStep(kind="tokens", dataset="qa", tokenizer="main.tok", chat_template="chat.jinja")
    job = Job("main.tok@qa", spec, tmp_path / "out", inputs={DATASET: tmp_path / "data", TOKENIZER: tmp_path / "tok"},
              root=tmp_path)
    with pytest.raises(BuildError) as exc:
        tokens_builder.build(job)
    assert str(exc.value) == ("train-00000.jsonl, line 1: the prompt's tokens are not a prefix of the conversation's, "
                              "so the response cannot be masked; end the template's generation prompt at a token "
                              "boundary (e.g. with a newline)")
