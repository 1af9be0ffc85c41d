"""Wall time and peak memory of exporting the 125M reference model to GGUF, against peers.

Writes: a temporary folder (removed unless --keep) with a BPE tokenizer trained by
targets/tokenizer on the pydoc topics that ship with CPython, the 125M model of
specs/models/gladius-125m.yaml initialized by targets/init (random weights, float32,
~500 MB of safetensors), and the GGUF files.

Each measurement runs in a fresh child process, and its peak resident memory is the
child's own high-water mark (VmHWM of /proc/self/status, read as it ends; the rusage
of a child, from wait4, was seen to carry an earlier child's larger peak), so imports
count and nothing leaks between runs:

* `ingot step`: `targets.gguf.build` on a one-type export job, everything a `doit`
  step does: header and tokenizer checks, the chat-template check (which imports
  transformers), the write, the facts read back from the file.
* `ingot write`: `targets.gguf.write` alone, tensor by tensor with plain reads.
* peer `gguf-py, whole model`: the hand-written converter this replaces: load every
  tensor (safetensors.numpy.load_file), permute, quantize all, `GGUFWriter.add_tensor`
  each, `write_tensors_to_file`.
* `ingot write, mmap`: Ingot's writer reading through `safetensors.safe_open` instead of
  plain reads, to show why it does not: mapped pages count toward resident memory.

Ratios are of the `ingot write` run to the peer's, and the model's float32 size is
printed beside the peaks. Run: `python bench/gguf_export.py [--types f16 q8_0] [--keep]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD_HEAD = f"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
root = Path(sys.argv[1]); name = sys.argv[2]

def peak():  # this process's own high-water mark of resident memory, in bytes
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024
"""
INGOT_STEP = CHILD_HEAD + """
from compiler.inputs import MODEL, TOKENIZER
from compiler.specs import Export, ModelSpec
from targets import Job, gguf
spec = Export(kind="export", model="init", format="gguf", types=[name], display_name="gladius-125m",
              chat_template="chat.jinja")
out = root / f"step-{name}"; out.mkdir()
started = time.perf_counter()
gguf.build(Job("bench.gguf", spec, out, inputs={MODEL: root / "model", TOKENIZER: root / "tokenizer"},
               root=root, work=root / "work"))
print(time.perf_counter() - started, peak())
"""
INGOT_WRITE = CHILD_HEAD + """
from compiler import quants
from targets import gguf
config = json.loads((root / "model/config.json").read_text())
metadata = json.loads((root / "metadata.json").read_text())
started = time.perf_counter()
gguf.write(root / f"write-{name}.gguf", root / "model/model.safetensors", config, quants.TYPES[name], metadata)
print(time.perf_counter() - started, peak())
"""
INGOT_MMAP = INGOT_WRITE.replace("started = time.perf_counter()", """
from safetensors import safe_open
def mapped(path, config):
    with safe_open(str(path), framework="numpy") as f:
        for key in f.keys():
            group = gguf.rope_group(key, config)
            data = f.get_tensor(key)
            yield key, [gguf.permuted(data, group) if group > 1 else data]
gguf.hf_tensors = mapped
started = time.perf_counter()""", 1).replace('f"write-{name}.gguf"', 'f"mmap-{name}.gguf"')
PEER = CHILD_HEAD + """
import gguf as gg
import numpy as np
from safetensors.numpy import load_file
from compiler import quants
from targets.gguf import add, permuted, rope_group
config = json.loads((root / "model/config.json").read_text())
metadata = json.loads((root / "metadata.json").read_text())
gtype = quants.TYPES[name]
started = time.perf_counter()
writer = gg.GGUFWriter(str(root / f"peer-{name}.gguf"), "llama")
for key, value in metadata.items():
    add(writer, key, value)
writer.add_file_type(int(gg.LlamaFileType[gtype.ftype]))
for key, data in load_file(str(root / "model/model.safetensors")).items():
    data = permuted(data, rope_group(key, config)) if rope_group(key, config) > 1 else data
    qtype = gg.GGMLQuantizationType[quants.planned_type(data.shape, gtype)]
    quantized = gg.quants.quantize(data, qtype)
    writer.add_tensor(quants.gguf_name(key), quantized, raw_shape=quantized.shape, raw_dtype=qtype)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
print(time.perf_counter() - started, peak())
"""
RUNS = {"ingot step": INGOT_STEP, "ingot write": INGOT_WRITE, "gguf-py, whole model (peer)": PEER,
        "ingot write, mmap": INGOT_MMAP}


def prepare(root: Path) -> None:
    """Tokenizer and 125M model entries made by Ingot's builders, and the GGUF metadata."""
    import yaml

    from compiler.inputs import DATASET, TOKENIZER
    from compiler.specs import InitStep, ModelSpec, TokenizerStep
    from targets import Job, init, tokenizer
    from targets.gguf import model_metadata
    from targets.vocab import tokenizer_metadata

    from pydoc_data.topics import topics

    data = root / "dataset"
    data.mkdir()
    (data / "train-00000.jsonl").write_text("".join(json.dumps({"text": topics[t]}) + "\n" for t in sorted(topics)))
    model = ModelSpec.model_validate(yaml.safe_load((REPO / "specs/models/gladius-125m.yaml").read_text()))
    for sub in ("tokenizer", "model", "work"):
        (root / sub).mkdir()
    tokenizer.build(Job("bench.tokenizer", TokenizerStep(kind="tokenizer", dataset="docs", vocab_size=8192),
                        root / "tokenizer", inputs={DATASET: data}))
    init.build(Job("bench.init", InitStep(kind="init", model=model.name, tokenizer="tokenizer"), root / "model",
                   inputs={TOKENIZER: root / "tokenizer"}, models={"model": model}))
    shutil.copy2(REPO / "specs/templates/chat.jinja", root / "chat.jinja")
    config = json.loads((root / "model/config.json").read_text())
    spec = type("Spec", (), {"display_name": "gladius-125m", "temperature": 0.8, "top_p": 0.95})
    template = (root / "chat.jinja").read_text()
    metadata = {**model_metadata(config, spec), **tokenizer_metadata(root / "tokenizer", model.vocab_size, template)}
    (root / "metadata.json").write_text(json.dumps(metadata))


def measure(script: str, root: Path, name: str) -> tuple[float, float, float]:
    """(seconds the export took inside the child, the child's wall time, its peak RSS in bytes)."""
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", script, str(root), name], stdout=subprocess.PIPE, text=True)
    if child.returncode != 0:
        raise SystemExit(f"a measured run failed ({child.returncode})")
    seconds, peak = child.stdout.split()[-2:]
    return float(seconds), time.perf_counter() - started, int(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return
    root = Path(tempfile.mkdtemp(prefix="ingot-gguf-bench-"))
    try:
        started = time.perf_counter()
        # in a child, so this process stays small while it starts the measured ones
        subprocess.run([sys.executable, __file__, "--prepare", str(root)], check=True)
        size = (root / "model/model.safetensors").stat().st_size
        print(f"125M reference model (random init): {size / 1e6:,.0f} MB of float32 safetensors; "
              f"set up in {time.perf_counter() - started:.1f} s")
        print(f"{'type':6} {'run':30} {'export s':>9} {'process s':>10} {'peak MB':>8} {'peak/model':>11}")
        for name in args.types:
            results = {}
            for run, script in RUNS.items():
                results[run] = measure(script, root, name)
                seconds, wall, peak = results[run]
                print(f"{name:6} {run:30} {seconds:9.2f} {wall:10.2f} {peak / 1e6:8.0f} {peak / size:11.2f}")
            ours, peer = results["ingot write"], results["gguf-py, whole model (peer)"]
            out = root / f"write-{name}.gguf"
            same = out.read_bytes() == (root / f"peer-{name}.gguf").read_bytes()
            print(f"{name:6} ingot write / peer: time {ours[0] / peer[0]:.2f}x, peak memory {ours[2] / peer[2]:.2f}x; "
                  f"file {out.stat().st_size / 1e6:,.0f} MB, {'identical to' if same else 'DIFFERENT from'} the peer's")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
