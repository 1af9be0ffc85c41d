"""Content keys: canonical JSON, stat-cached file digests, builder-code digests."""

from __future__ import annotations

import os

import xxhash
from conftest import REPO

from compiler.keys import FileDigests, canonical, code_of, digest, keyed
from compiler.specs import ModelSpec


def test_canonical_json_ignores_key_order_and_number_spelling():
    assert canonical({"b": 1, "a": [1.0, 1e-06]}) == canonical({"a": [1.0, 0.000001], "b": 1})
    assert canonical({"a": 1}) != canonical({"a": 1.5})


def test_keyed_drops_describing_fields_and_fills_defaults():
    a = ModelSpec.model_validate({"kind": "model", "name": "a", "hidden_size": 64, "intermediate_size": 128,
                                  "layers": 2, "heads": 4, "vocab_size": 300, "description": "x",
                                  "expect_params": 1})
    b = ModelSpec.model_validate({"kind": "model", "name": "b", "hidden_size": 64, "intermediate_size": 128,
                                  "layers": 2, "heads": 4, "kv_heads": 4, "head_dim": 16, "vocab_size": 300,
                                  "rope_theta": 10000})
    assert keyed(a) == keyed(b)
    assert "name" not in keyed(a) and "description" not in keyed(a) and keyed(a)["head_dim"] == 16


def test_file_digest_is_xxh3_128_of_the_bytes(tmp_path):
    f = tmp_path / "data.txt"
    f.write_bytes(b"hello")
    assert FileDigests(tmp_path)(f) == xxhash.xxh3_128_hexdigest(b"hello")


def test_unchanged_stat_is_not_read_again(tmp_path):
    f = tmp_path / "data.txt"
    f.write_bytes(b"hello")
    digests = FileDigests(tmp_path)
    first = digests(f)
    digests.save()
    st = f.stat()
    f.write_bytes(b"HELLO")  # same size; put the old mtime back: the cache must answer
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert FileDigests(tmp_path)(f) == first
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a touched file is read again
    assert FileDigests(tmp_path)(f) == xxhash.xxh3_128_hexdigest(b"HELLO")


def _copy_code(tmp_path):
    import shutil

    for name in ("targets", "compiler"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_code_digest_follows_project_imports(tmp_path):
    root = _copy_code(tmp_path)

    def digests():
        files = FileDigests(root)
        return {k: code_of(root, f"targets.{k}", files) for k in ("dataset", "tokenizer", "init")}

    before = digests()
    (root / "targets/tokenizer.py").write_text((root / "targets/tokenizer.py").read_text() + "\nEDITED = 1\n")
    after = digests()
    assert after["tokenizer"] != before["tokenizer"]
    assert after["dataset"] == before["dataset"] and after["init"] == before["init"]
    # Every builder imports the package (Job, BuildError): an edit there changes them all.
    (root / "targets/__init__.py").write_text((root / "targets/__init__.py").read_text() + "\nEDITED = 1\n")
    now = digests()
    assert all(now[k] != after[k] for k in now)
    # The compiler is not a builder's import: editing it rebuilds nothing.
    (root / "compiler/project.py").write_text((root / "compiler/project.py").read_text() + "\nEDITED = 1\n")
    assert digests() == now


def test_comments_docstrings_and_formatting_do_not_count(tmp_path):
    root = _copy_code(tmp_path)
    path = root / "targets/tokenizer.py"
    before = code_of(root, "targets.tokenizer", FileDigests(root))
    text = path.read_text()
    edited = text.replace('"""Tokenizer builder', '"""The tokenizer builder', 1).replace("\n\n\n", "\n\n\n# a comment\n", 1)
    edited = edited.replace("def build(job: Job) -> dict:\n", 'def build(job: Job) -> dict:\n    """Build it."""\n', 1)
    edited = edited.replace("OUTPUTS = (", "OUTPUTS  =  (", 1)
    assert edited.count('"""Build it."""') == 1 and "# a comment" in edited and edited != text
    path.write_text(edited)
    assert code_of(root, "targets.tokenizer", FileDigests(root)) == before
    path.write_text(edited.replace("OUTPUTS  =  (", "OUTPUTS = ('x',", 1))
    assert code_of(root, "targets.tokenizer", FileDigests(root)) != before


def test_tracked_libraries_enter_the_digest_of_the_builders_that_import_them(tmp_path):
    from compiler.keys import library_version

    root = _copy_code(tmp_path)
    files = FileDigests(root)
    assert set(code_of(root, "targets.tokenizer", files).libraries) == {"tokenizers"}
    assert {"torch", "transformers"} <= set(code_of(root, "targets.train", files).libraries)
    assert "torch" not in code_of(root, "targets.dataset", files).libraries
    assert "gguf" in code_of(root, "targets.gguf", files).libraries
    assert "gguf" not in code_of(root, "targets.export", files).libraries
    assert code_of(root, "targets.tokenizer", files).libraries["tokenizers"] == library_version("tokenizers")


def test_builders_do_not_rekey_each_other(tmp_path):
    root = _copy_code(tmp_path)
    files = FileDigests(root)
    modules = {b: set(code_of_modules(root, b, files)) for b in ("export", "gguf", "evaluate", "init", "train")}
    assert "targets.gguf" not in modules["export"] | modules["evaluate"]
    assert "targets.export" not in modules["gguf"]
    assert "targets.init" not in modules["train"]


def test_digest_is_xxh3_128():
    assert digest(b"abc") == xxhash.xxh3_128_hexdigest(b"abc") and len(digest(b"")) == 32


def test_imports_for_type_hints_only_are_not_code_inputs(tmp_path):
    root = _copy_code(tmp_path)
    files = FileDigests(root)
    before = code_of(root, "targets.init", files)
    # compiler/params.py imports compiler.specs under TYPE_CHECKING only: the init builder's
    # weights do not depend on the specs module.
    (root / "compiler/specs.py").write_text((root / "compiler/specs.py").read_text() + "\nEDITED = 1\n")
    assert code_of(root, "targets.init", FileDigests(root)) == before
    (root / "compiler/params.py").write_text((root / "compiler/params.py").read_text() + "\nEDITED = 1\n")
    assert code_of(root, "targets.init", FileDigests(root)) != before


def code_of_modules(root, builder, files):
    return code_of(root, f"targets.{builder}", files).modules


def test_a_set_written_as_a_list_is_keyed_in_one_order():
    from compiler.specs import Export

    a = Export.model_validate({"kind": "export", "model": "s", "format": "gguf", "types": ["q8_0", "f16"]})
    b = Export.model_validate({"kind": "export", "model": "s", "format": "gguf", "types": ["f16", "q8_0"]})
    assert a.types != b.types and keyed(a) == keyed(b) and keyed(a)["types"] == ["f16", "q8_0"]
