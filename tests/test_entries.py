"""compiler/entries.py: the typed manifest and the files steps read of each other's entries.

A manifest the runner wrote reads back typed and equal, and its bytes are those the earlier
writer (`json.dumps(manifest, indent=2, sort_keys=True)`) gave for the same content; a
manifest (or tokens.json, metrics.json) with a field its readers need renamed or missing is an
error that names the file and the field; and the contract: one reader of manifest.json, one
`Tokenizer.from_file` in targets/.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from compiler import entries, store
from compiler.entries import EntryError, GgufEntry, TokensEntry, TrainEntry
from conftest import REPO


def old_writer(manifest: dict) -> str:
    """What store.commit wrote before compiler/entries.py."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def manifest_dict(builder: str = "train", metrics: dict | None = None, **changes) -> dict:
    """A manifest as the runner builds it, of every part a reader types (defaults: a train entry's)."""
    d = {"key": "ab" * 16, "base": "cd" * 16, "task": "main.student", "kind": builder, "builder": builder,
         "profile": None, "code": {"modules": {"targets": "01" * 16, f"targets.{builder}": "02" * 16},
                                   "libraries": {"torch": "2.13.0", "llama_cpp_python": None}},
         "device": "cpu", "spec": {"kind": builder, "lr": 1e-05, "note": "naïve — ü", "phases": [{"w": 0.5}]},
         "inputs": {"tokenizer": {"task": "main.tok", "key": "ef" * 16, "outputs": "12" * 16}},
         "sources": {"template": "34" * 16},
         "outputs": {"model.safetensors": {"size": 205_536, "xxh3_128": "56" * 16}},
         "metrics": TRAIN_METRICS if metrics is None else metrics,
         "environment": {"python": "3.11.2", "platform": "Linux-6.1", "machine": "x86_64", "cpu": "Some CPU",
                         "cpus": 2, "ram_bytes": 8_000_000_000, "torch": "2.13.0", "transformers": "5.0.0",
                         "tokenizers": "0.22.1", "gguf": None, "llama_cpp_python": None},  # no gpu: not asked
         "timings": {"started": 1_760_000_000.123456, "finished": 1_760_000_012.5, "seconds": 12.376}}
    d.update(changes)
    return d


TRAIN_METRICS = {"parameters": 51_360, "steps": 15, "total_steps": 15, "stopped_early": False,
                 "final_loss": 5.123456789, "final_val_loss": None, "best_val_loss": 5.5, "tokens_seen": 7_680,
                 "seconds": 3.25, "resumed_from": None, "device": "cpu", "dtype": "float32",
                 "phases": [], "stages": [{"name": "a", "first_step": 1, "loss_start": 6.0, "ce_start": 6.0,
                                           "kd_start": None}], "checkpoints": ["step-000015"]}
GGUF_FILE = {"file": "model-q8_0.gguf", "bytes": 123_456, "tensor_bytes": 100_000, "parameters": 51_360,
             "bits_per_weight": 8.5, "file_type": "MOSTLY_Q8_0", "histogram": {"F32": 5, "Q8_0": 14},
             "tensors": {"token_embd.weight": "Q8_0"}, "seconds": 0.041}
TOKENS_INFO = {"dtype": "uint16", "eos_id": 2, "bos_id": 1, "pad_id": None, "vocab_size": 400,
               "splits": {"train": {"documents": 270, "tokens": 40_000}, "validation": {"documents": 30, "tokens": 4}}}


def write_entry(folder: Path, manifest: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(old_writer(manifest))
    return folder


# ---------------------------------------------------------------- written, read back, same bytes

@pytest.mark.parametrize("builder, metrics", [
    ("train", TRAIN_METRICS), ("gguf", {"files": {"q8_0": GGUF_FILE, "f32": {**GGUF_FILE, "file": "model-f32.gguf"}}}),
    ("export", {"tensors": 21, "weights_bytes": 205_536}), ("tokens", TOKENS_INFO),
    ("tokens", {**TOKENS_INFO, "mask": True}), ("report", {"id": "abc", "bytes": {"report.md": 10}}),
    ("dataset", {}),
])
def test_the_json_on_disk_is_byte_identical_to_the_earlier_writer(builder, metrics, tmp_path):
    d = manifest_dict(builder, metrics)
    made = entries.manifest(**d)
    assert made.to_json() == old_writer(d)
    entries.write(tmp_path, made)
    assert (tmp_path / "manifest.json").read_text() == old_writer(d)
    assert entries.read(tmp_path) == made
    assert entries.read(tmp_path).to_json() == old_writer(d)


def test_a_view_types_the_metrics_and_writes_the_same_bytes(tmp_path):
    train = entries.read(write_entry(tmp_path / "train", manifest_dict()), TrainEntry)
    assert train.metrics.tokens_seen == 7_680 and train.metrics.resumed_from is None
    assert train.timings.seconds == 12.376 and train.inputs["tokenizer"].key == "ef" * 16
    assert train.environment.cpus == 2 and train.environment.recorded("gguf") and not train.environment.recorded("gpu")
    assert train.to_json() == old_writer(manifest_dict())
    gguf_entry = write_entry(tmp_path / "gguf", manifest_dict("gguf", {"files": {"q8_0": GGUF_FILE}}))
    gguf = entries.read(gguf_entry, GgufEntry)
    assert gguf.metrics.files["q8_0"].bits_per_weight == 8.5
    tokens = entries.read(write_entry(tmp_path / "tokens", manifest_dict("tokens", TOKENS_INFO)), TokensEntry)
    assert tokens.metrics.splits["validation"].tokens == 4 and tokens.metrics.mask is False
    assert entries.read(tmp_path / "nothing-here") is None


def test_a_manifest_the_runner_wrote_reads_back_typed_and_equal(tiny_project):
    tiny_project.doit()
    found = store.entries(tiny_project.root)
    assert len(found) == 3 and None not in found.values()
    for key, manifest in found.items():
        path = store.entry(tiny_project.root, key) / "manifest.json"
        on_disk = path.read_text()
        assert manifest.key == key
        assert manifest.to_json() == on_disk  # typed and back: the same bytes
        assert old_writer(json.loads(on_disk)) == on_disk  # the layout every earlier entry has
        assert manifest == entries.manifest(**json.loads(on_disk))
        for name, o in manifest.outputs.items():
            assert (path.parent / name).stat().st_size == o.size
    init = store.read_manifest(tiny_project.root, "build/main/init")
    tok = store.read_manifest(tiny_project.root, "build/main/tok")
    assert init.inputs["tokenizer"].key == tok.key and init.inputs["tokenizer"].task == "main.tok"
    assert init.inputs["tokenizer"].outputs == store.outputs_digest(tok.outputs)
    assert init.timings.finished >= init.timings.started and init.environment.recorded("python")


# ---------------------------------------------------------------- a renamed or missing field

def test_a_renamed_metric_names_the_entry_folder_and_the_field(tmp_path):
    metrics = {("tokens_sen" if k == "tokens_seen" else k): v for k, v in TRAIN_METRICS.items()}
    folder = write_entry(tmp_path / "store" / "ab12", manifest_dict(metrics=metrics))
    with pytest.raises(EntryError) as info:
        entries.read(folder, TrainEntry)
    assert str(info.value) == (
        f"{folder}/manifest.json: metrics.tokens_seen: missing; metrics.tokens_sen: not a field its readers know; "
        "targets/train.py and its type in compiler/entries.py disagree (or the file was edited by hand): change "
        "them together")
    # the store reads the envelope only: the metrics are the builder's, typed where a step reads them
    assert entries.read(folder).metrics["tokens_sen"] == 7_680


def test_a_missing_field_names_the_entry_folder_and_the_field(tmp_path):
    d = manifest_dict("gguf", {"files": {"q8_0": {k: v for k, v in GGUF_FILE.items() if k != "bits_per_weight"}}})
    folder = write_entry(tmp_path / "cd34", d)
    with pytest.raises(EntryError) as info:
        entries.read(folder, GgufEntry)
    assert str(info.value).startswith(f"{folder}/manifest.json: metrics.files.q8_0.bits_per_weight: missing; "
                                      "targets/gguf.py and its type")
    del d["timings"]
    write_entry(folder, d)
    with pytest.raises(EntryError) as info:
        entries.read(folder, GgufEntry)
    assert str(info.value) == (
        f"{folder}/manifest.json: timings: missing; written by another version of Ingot or edited by hand: "
        "`doit verify --repair` moves its entry aside, so the next `doit` rebuilds it")


def test_the_store_treats_an_unreadable_manifest_as_no_entry_and_verify_says_why(tmp_path):
    d = manifest_dict("export", {"tensors": 21, "weights_bytes": 205_536})
    d["environment"] = {**d["environment"], "ram": d["environment"].pop("ram_bytes")}
    folder = write_entry(tmp_path / "build" / "store" / d["key"], d)
    (folder / "model.safetensors").write_bytes(b"x" * 205_536)
    assert store.read_entry(tmp_path, d["key"]) is None and not store.is_complete(tmp_path, d["key"])
    assert store.verify(tmp_path, d["key"]) == [
        f"no readable manifest.json: {folder}/manifest.json: environment.ram: not a field its readers know; written "
        "by another version of Ingot or edited by hand: `doit verify --repair` moves its entry aside, so the next "
        "`doit` rebuilds it"]


def test_the_runner_cannot_write_a_manifest_its_readers_do_not_expect():
    d = manifest_dict()
    d["environment"] = {**d["environment"], "ram": d["environment"].pop("ram_bytes")}
    with pytest.raises(EntryError) as info:
        entries.manifest(**d)
    assert str(info.value) == ("its manifest: environment.ram: not a field its readers know; change runner.py and "
                               "the type in compiler/entries.py together, so that readers read what it writes")
    with pytest.raises(EntryError) as missing:
        entries.manifest(**{k: v for k, v in manifest_dict().items() if k != "outputs"})
    assert str(missing.value).startswith("its manifest: outputs: missing; ")


def test_a_renamed_field_of_tokens_json_and_of_metrics_json_names_the_file(tmp_path):
    (tmp_path / "tokens.json").write_text(json.dumps({**TOKENS_INFO, "dtype": None}))
    with pytest.raises(EntryError) as info:
        entries.read_tokens_info(tmp_path)
    assert str(info.value) == (f"{tmp_path}/tokens.json: dtype: input should be a valid string (found null); "
                               "targets/tokens.py and its type in compiler/entries.py disagree (or the file was "
                               "edited by hand): change them together")
    (tmp_path / "metrics.json").write_text(json.dumps({"data": {}, "checkpoint": {}, "gguf": {}}))
    with pytest.raises(EntryError) as info:
        entries.read_evaluation(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}/metrics.json: data.dataset: missing; ")
    assert "generation: missing" in str(info.value)


def test_train_rows_are_typed_and_a_renamed_field_names_the_line(tmp_path):
    row = {"step": 1, "phase": None, "stage": "a", "loss": 5.5, "ce": 5.5, "kd": None, "lr": 0.0003,
           "grad_norm": 1.25, "tokens": 128, "tokens_per_s": 4096.0, "val_loss": None, "wall_time": 0.0312}
    renamed = {("seconds" if k == "wall_time" else k): v for k, v in {**row, "step": 2}.items()}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(renamed) + "\n")
    with pytest.raises(EntryError) as info:
        entries.read_train_rows(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}/metrics.jsonl, line 2: wall_time: missing; targets/train.py ")
    (tmp_path / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    (first,) = entries.read_train_rows(tmp_path)
    assert (first.step, first.stage, first.loss, first.wall_time) == (1, "a", 5.5, 0.0312)


def test_a_builder_input_without_a_manifest_is_an_error(tmp_path):
    with pytest.raises(EntryError) as info:
        entries.load(tmp_path)
    assert str(info.value) == f"{tmp_path}: no manifest.json, so it is not a store entry; name a step that builds it"


# ---------------------------------------------------------------- the contract: one reader of each

def code_files() -> list[Path]:
    return sorted([*(REPO / "targets").rglob("*.py"), *(REPO / "compiler").rglob("*.py"), REPO / "runner.py"])


def strings_and_names(path: Path) -> tuple[list[str], list[str]]:
    """String constants that are not docstrings, and `x.attr` / names, of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
               and id(n) not in docs]
    names = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Attribute, ast.Name))]
    return strings, names


def test_tokenizer_from_file_occurs_once_in_targets():
    found = {str(p.relative_to(REPO)): strings_and_names(p)[1].count("Tokenizer.from_file")
             for p in (REPO / "targets").rglob("*.py")}
    assert {p: n for p, n in found.items() if n} == {"targets/__init__.py": 1}


def test_manifest_json_is_read_in_one_place():
    """Only compiler/entries.py names the file (its MANIFEST) or opens a path built from it; the
    store names MANIFEST once more, to list it among an entry's files in `verify`."""
    named, joined = {}, {}
    for path in code_files():
        rel = str(path.relative_to(REPO))
        strings, names = strings_and_names(path)
        if "manifest.json" in strings:
            named[rel] = strings.count("manifest.json")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        joins = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)
                 and "MANIFEST" in ast.unparse(n.right)]
        if joins:
            joined[rel] = len(joins)
    assert named == {"compiler/entries.py": 1}
    assert set(joined) == {"compiler/entries.py"}
