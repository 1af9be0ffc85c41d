"""Report builder, through a real project: a distilled student with exports and an evaluation,
reported by the default template; numbers recomputed from the artifacts, template errors,
byte-identical re-renders, and the HTML page as headless Chromium draws it."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from compiler import entries, params, store
from compiler.entries import ExportEntry, TokensEntry, TrainEntry, TrainRow
from compiler.specs import ModelSpec, ReportStep
from compiler.templates import size
from compiler.inputs import TRAIN, Input
from conftest import REPO, Project, code_project, ran, tiny_corpus
from targets import BuildError, Job
from targets import report as report_builder

pytestmark = pytest.mark.slow  # trains two small models and runs `doit` in fresh interpreters

TEMPLATE = "specs/templates/training-report.md.jinja"
OUTPUTS = ["loss.png", "lr.png", "report.html", "report.md"]
MODELS = {
    "student": dict(hidden_size=32, intermediate_size=64, layers=2, heads=4, kv_heads=2),
    "teacher": dict(hidden_size=64, intermediate_size=128, layers=2, heads=4),
    "helper": dict(hidden_size=48, intermediate_size=96, layers=1, heads=4, tie_embeddings=True),
}
SMALL = {"data": "docs", "tokenizer": "tok", "batch_size": 4, "seq_len": 32, "eval": {"every": 4, "batches": 1}}
PROMPTS = [{"name": "greeting", "text": "Hello! Who are you?"},
           {"name": "len", "text": "What does len() return? | <b>bold</b>"}]
LLAMA = importlib.util.find_spec("llama_cpp") is not None
SECTIONS = ["## Executive summary", "## Architecture", "## Hardware and software", "## Training hyperparameters",
            "## Distillation", "## Loss curve", "## Convergence analysis", "## Evaluation", "## Inference benchmark",
            "## GGUF quantizations", "## Output artifacts", "## Appendix A: raw loss data",
            "## Appendix B: model config"]


def model_yaml(name: str) -> str:
    return yaml.safe_dump({"kind": "model", "name": name, "vocab_size": 512, "max_positions": 128, **MODELS[name]})


def model_spec(name: str) -> ModelSpec:
    return ModelSpec.model_validate(yaml.safe_load(model_yaml(name)))


def pipeline() -> dict:
    """Tokenizer, a pretrained teacher and an initialized helper, the student distilled from them
    in two phases, its Hugging Face and GGUF exports, an evaluation (of the GGUF files too
    where llama.cpp is installed) and the report."""
    steps = {
        "tok": {"kind": "tokenizer", "dataset": "docs", "vocab_size": 400},
        "teacher": {"kind": "train", "model": "teacher", **SMALL, "max_steps": 8, "optimizer": {"lr": 0.003}},
        "helper": {"kind": "init", "model": "helper", "tokenizer": "tok", "seed": 1},
        "student": {"kind": "train", "model": "student", **SMALL, "objective": "distill",
                    "optimizer": {"lr": 0.003}, "schedule": {"warmup_steps": 2},
                    "distill": {"temperature": 2.0, "alpha": 0.7,
                                "teachers": {"teacher": {"step": "teacher"}, "helper": {"step": "helper"}},
                                "phases": [{"name": "warmup", "steps": 6, "teachers": {"teacher": 1.5}},
                                           {"name": "refine", "steps": 6, "teachers": {"teacher": 1.0, "helper": 0.5}}]}},
        "hf": {"kind": "export", "model": "student"},
        "gguf": {"kind": "export", "format": "gguf", "model": "student", "types": ["f32", "q8_0"]},
        "eval": {"kind": "evaluate", "model": "student", "seq_len": 32, "windows": 4, "prompts": PROMPTS,
                 "max_new_tokens": 8, **({"gguf": "gguf"} if LLAMA else {})},
        "report": {"kind": "report", "train": "student", "evaluate": "eval", "exports": ["hf", "gguf"], "loss_rows": 5},
    }
    return {"kind": "pipeline", "name": "main", "steps": steps}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    p = code_project(tmp_path_factory.mktemp("report") / "proj")
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    p.write("specs/datasets/docs.yaml", "kind: dataset\nname: docs\nsources:\n  - type: files\n    glob: data/*.jsonl\n"
                                        "split:\n  validation: 0.1\n")
    for name in MODELS:
        p.write(f"specs/models/{name}.yaml", model_yaml(name))
    for rel in ("specs/templates/chat.jinja", TEMPLATE):
        p.write(rel, (REPO / rel).read_text())
    p.write("specs/pipelines/main.yaml", yaml.safe_dump(pipeline(), sort_keys=False))
    started = time.perf_counter()
    result = p.doit()
    print(f"\nfirst build: {time.perf_counter() - started:.1f} s")
    assert ran(result) == ["dataset.docs", "main.tok", "main.tok@docs", "main.teacher", "main.helper",
                           "main.teacher~tok@docs~s32~k64~t2", "main.helper~tok@docs~s32~k64~t2", "main.student",
                           "main.hf", "main.gguf", "main.eval", "main.report"]
    return p


@pytest.fixture(scope="module")
def md(project) -> str:
    return project.read("build/main/report/report.md")


def entry(p: Project, step: str) -> Path:
    return (p.root / "build" / "main" / step).resolve()


def manifest(p: Project, step: str) -> dict:
    return json.loads((entry(p, step) / "manifest.json").read_text())


def metrics_rows(p: Project, step: str = "student") -> list[dict]:
    return [json.loads(line) for line in (entry(p, step) / "metrics.jsonl").read_text().splitlines()]


def report_job(p: Project, out: Path, inputs: dict[str, str] | None = None, model: str = "student",
               **fields) -> Job:
    """The report job `doit` ran (its spec, inputs and key from the report's manifest), or one
    with other fields and inputs (field -> step), writing into `out`."""
    built = manifest(p, "report")
    keyed = {k: v for k, v in built["spec"].items() if k in ReportStep.model_fields}  # the key holds the model too
    spec = ReportStep.model_validate({**keyed, **fields})
    found = {Input.parse(f): store.entry(p.root, i["key"]) for f, i in built["inputs"].items()} \
        if inputs is None else {Input.parse(f): entry(p, step) for f, step in inputs.items()}
    out.mkdir(parents=True)
    return Job("main.report", spec, out, inputs=found, models={"model": model_spec(model)}, root=p.root,
               key=built["key"])


def lines(text: str) -> set[str]:
    return set(text.splitlines())


# ---------------------------------------------------------------- incremental builds

def test_editing_the_template_renders_only_the_report_again(project):
    link = project.root / "build" / "main" / "report"
    before = os.readlink(link)
    path = project.root / TEMPLATE
    original = path.read_text()
    try:
        path.write_text(original + "\nEdited by the test.\n")
        started = time.perf_counter()
        result = project.doit()
        print(f"\ntemplate-only rebuild: {time.perf_counter() - started:.2f} s (doit, compile and render)")
        assert ran(result) == ["main.report"]
        assert result.stdout.splitlines()[-1] == ("report: build/main/report/report.html "
                                                  "(Markdown: build/main/report/report.md)")
        assert (link / "report.md").read_text().endswith("\n\nEdited by the test.\n")
        assert os.readlink(link) != before
    finally:
        path.write_text(original)
    result = project.doit()  # the earlier entry is still in the store: nothing runs, the link returns
    assert ran(result) == []
    assert result.stdout.splitlines()[-1].startswith("report: build/main/report/report.html")  # said every time
    assert os.readlink(link) == before


def test_the_report_is_an_entry_of_four_files(project):
    built = manifest(project, "report")
    assert sorted(built["outputs"]) == OUTPUTS
    assert sorted(built["inputs"]) == ["evaluate", "export.gguf", "export.hf", "teacher.helper", "teacher.teacher",
                                       "train"]
    assert built["metrics"] == {"id": built["key"][:12], "template": TEMPLATE, "sections": len(SECTIONS),
                                "bytes": {n: built["outputs"][n]["size"] for n in OUTPUTS}}


def test_every_entry_reads_typed_and_writes_back_the_bytes_on_disk(project):
    """The manifest of every kind this project built, the typed views of those others read, and the
    evaluate entry's metrics.json: read through compiler.entries and written again, byte for byte."""
    found = store.entries(project.root)
    assert None not in found.values()
    assert {m.builder for m in found.values()} == {"dataset", "tokenizer", "tokens", "train", "init", "export",
                                                    "gguf", "evaluate", "report", "teacher"}
    for key, m in found.items():
        assert m.to_json() == (store.entry(project.root, key) / "manifest.json").read_text(), m.task
    views = {"student": TrainEntry, "teacher": TrainEntry, "hf": ExportEntry, "gguf": ExportEntry,
             "tok@docs": TokensEntry}
    for step, view in views.items():
        on_disk = (entry(project, step) / "manifest.json").read_text()
        assert entries.load(entry(project, step), view).to_json() == on_disk, step
    assert entries.load(entry(project, "student"), TrainEntry).metrics.tokens_seen > 0
    evaluation = entries.read_evaluation(entry(project, "eval"))
    assert evaluation.to_json() == (entry(project, "eval") / "metrics.json").read_text()


def test_every_section_of_the_default_template(project, md):
    engines = json.loads((entry(project, "eval") / "metrics.json").read_text())["generation"]["engines"]
    assert list(engines) == ["torch", *(["gguf-f32", "gguf-q8_0"] if LLAMA else [])]
    assert [line for line in md.splitlines() if line.startswith("## ")] == SECTIONS
    assert [line for line in md.splitlines() if line.startswith("### ")] == [
        "### Core dimensions", "### Parameter distribution", "### Per-layer breakdown", "### Architectural features",
        "### Teachers", "### Losses per phase", "### Distillation schedule",
        *(f"### {e['label']}" for e in engines.values())]


# ---------------------------------------------------------------- numbers from the artifacts

def test_parameters_recomputed_from_the_model_specs(project, md):
    m = model_spec("student")
    total, parts = params.count(m), params.breakdown(m)

    def row(label: str, n: int) -> str:
        return f"| {label} | {n:,} | {100 * n / total:.2f}% |"

    norms = parts["layers.input_layernorm"] + parts["layers.post_attention_layernorm"] + parts["norm"]
    attention = sum(parts[f"layers.self_attn.{x}_proj"] for x in "qkvo")
    mlp = sum(parts[f"layers.mlp.{x}_proj"] for x in ("gate", "up", "down"))
    assert total == 51_360 and norms == 5 * 32
    assert {f"| Total parameters | {total:,} |", row("token embedding (embed_tokens)", parts["embed_tokens"]),
            row("attention (q, k, v, o projections of 2 layers)", attention),
            row("feed-forward (SwiGLU gate, up, down of 2 layers)", mlp), row("RMSNorm weights (5 norms)", norms),
            row("LM head", parts["lm_head"]), f"| **Total** | **{total:,}** | **100.00%** |",
            f"| self_attn.k_proj | 16 × 32 | 512 | {100 * 512 / 9280:.2f}% | 1,024 | {100 * 1024 / total:.2f}% |",
            "- Grouped-query attention: 4 query heads share 2 key/value heads (2 query heads per key/value head)",
            "- Tied embeddings: no (separate LM head)"} <= lines(md)
    # the teachers' sizes, read from their weights, against their specs
    teacher, helper = params.count(model_spec("teacher")), params.count(model_spec("helper"))
    # the stored outputs cover every whole window of 32 tokens (+ 1) of the train split
    windows = (entries.read_tokens_info(entry(project, "tok@docs")).splits["train"].tokens - 1) // 32
    assert {f"| teacher | step main.teacher | {teacher:,} | same | stored, top-64, {windows:,} windows | 100.00% | — "
            "| 1.5 | 1.0 |",
            f"| helper | step main.helper | {helper:,} | same | stored, top-64, {windows:,} windows | 100.00% | — "
            "| — | 0.5 |",
            "- teacher (`align: same`): KL(softmax(t/T) ‖ softmax(s/T)) · T², token by token (T² = 4.0)"} <= lines(md)


def test_losses_recomputed_from_metrics_jsonl(project, md):
    rows = metrics_rows(project)
    assert [r["phase"] for r in rows] == ["warmup"] * 6 + ["refine"] * 6
    expected = []
    for name, first, last, teachers in (("warmup", 0, 5, "teacher (1.5)"), ("refine", 6, 11, "helper (0.5), teacher (1.0)")):
        start, end = rows[first]["loss"], rows[last]["loss"]
        seconds = rows[last]["wall_time"] - (rows[first - 1]["wall_time"] if first else 0.0)
        assert seconds < 60
        expected.append(f"| {name} | {teachers} | {first + 1}–{last + 1} ({last - first + 1}) | {seconds:.1f} s | "
                        f"{start:.4f} | {end:.4f} | {start - end:.4f} ({100 * (start - end) / start:.2f}%) |")
    initial, final = rows[0]["loss"], rows[-1]["loss"]
    spikes = sum(1 for a, b in zip(rows, rows[1:]) if b["loss"] > 1.1 * a["loss"])
    expected += [f"| Initial loss (step 1) | {initial:.4f} |", f"| Final loss (step 12) | {final:.4f} |",
                 f"| Reduction | {initial - final:.4f} ({100 * (initial - final) / initial:.2f}%) |",
                 f"| Mean change per step | {(final - initial) / 11:.6f} |", f"| Loss spikes | {spikes} |",
                 "A spike is a step whose training loss exceeds the previous step's loss by more than 10% of it.",
                 f"| Final training loss | {final:.4f} |"]
    expected += [f"| {r['step']} | {r['val_loss']:.4f} |" for r in rows if r["val_loss"] is not None]
    assert set(expected) <= lines(md)
    # losses per phase: each teacher's weighted KD term, their sum, CE and the total, at the
    # phase's first and last step, as metrics.jsonl has them
    section = md.split("### Losses per phase\n")[1].split("### Distillation schedule")[0]
    tables = {}
    for block in section.strip().split("\n\n")[::2]:
        name = block.split(" (steps")[0]
        tables[name] = section.split(block)[1].split("\n\n")[1].splitlines()[2:]
    for name, first, last in (("warmup", 0, 5), ("refine", 6, 11)):
        a, b = rows[first], rows[last]
        assert tables[name] == [f"| KD {t} (weighted) | {a['kd_teachers'][t]:.4f} | {b['kd_teachers'][t]:.4f} |"
                                for t in sorted(a["kd_teachers"])] + [
            f"| KD, all teachers | {a['kd']:.4f} | {b['kd']:.4f} |", f"| CE | {a['ce']:.4f} | {b['ce']:.4f} |",
            f"| Total = 0.7 · KD + 0.3 · CE | {a['loss']:.4f} | {b['loss']:.4f} |"], name
        assert a["loss"] == pytest.approx(0.7 * a["kd"] + 0.3 * a["ce"], rel=1e-5)
        assert a["kd"] == pytest.approx(sum(a["kd_teachers"].values()), rel=1e-5)
    # the text curve: step 1, every 3 steps (11 intervals over loss_rows 5 - 1), and the last step
    curve = md.split("```text\n")[2].split("\n```")[0].splitlines()
    assert [int(line.split()[0]) for line in curve] == [1, 4, 7, 10, 12]
    assert [line.split()[1] for line in curve] == [f"{rows[s - 1]['loss']:.4f}" for s in (1, 4, 7, 10, 12)]
    assert curve[0] == f" 1    {initial:.4f}  {'█' * 40}  warmup"
    # the raw data appendix is metrics.jsonl's numbers, exactly
    raw = json.loads(md.split("```json\n")[1].split("\n```")[0])
    assert raw == [{k: r[k] for k in ("step", "phase", "stage", "loss", "val_loss", "lr")} for r in rows]


def test_files_and_environment_recomputed(project, md):
    expected = []
    for step in ("student", "hf", "gguf"):
        folder = entry(project, step)
        names = ["model.safetensors"] if step == "student" else sorted(manifest(project, step)["outputs"])
        for name in names:
            data = (folder / name).read_bytes()
            expected.append(f"| main.{step} | {name} | {size(len(data))} ({len(data):,} bytes) | "
                            f"`{hashlib.sha256(data).hexdigest()}` |")
    env, timings = manifest(project, "student")["environment"], manifest(project, "student")["timings"]
    from datetime import datetime, timezone

    started, finished = (datetime.fromtimestamp(timings[k], timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
                         for k in ("started", "finished"))
    expected += [f"| CPU | {env['cpu']} |", f"| Logical cores | {os.cpu_count()} |", f"| Python | {env['python']} |",
                 f"| RAM | {size(env['ram_bytes'])} ({env['ram_bytes']:,} bytes) |", "| GPU | none (no CUDA device) |",
                 f"| torch | {env['torch']} |", f"| transformers | {env['transformers']} |",
                 f"Report `{manifest(project, 'report')['key'][:12]}` of step `main.report`, on training run "
                 f"`main.student` (built {started} to {finished})."]
    assert set(expected) <= lines(md)
    assert json.loads(md.split("```json\n")[2].split("\n```")[0]) == json.loads(
        (entry(project, "student") / "config.json").read_text())


def test_evaluation_tables_recomputed_from_metrics_json(project, md):
    m = json.loads((entry(project, "eval") / "metrics.json").read_text())
    c = m["checkpoint"]
    expected = [f"| Validation perplexity | {c['perplexity']:.2f} |",
                f"| float checkpoint (torch) | {c['parameters']:,} | {size(c['weights_bytes'])} | {c['loss']:.4f} | "
                f"{c['perplexity']:.2f} |",
                f"| checkpoint | model.safetensors | {size(c['weights_bytes'])} | "
                f"{8 * c['weights_bytes'] / c['parameters']:.2f} | {c['perplexity']:.2f} | 1.0000 | 0.000000 | "
                "0.000000 | 100.00% |"]
    for name, q in m["gguf"].items():
        expected.append(f"| {name} | {q['file']} | {size(q['bytes'])} | {q['bits_per_weight']:.2f} | "
                        f"{q['perplexity']:.2f} | {q['perplexity'] / c['perplexity']:.4f} | {q['kld_mean']:.6f} | "
                        f"{q['kld_p99']:.6f} | {100 * q['top1_same'] / m['data']['tokens']:.2f}% |")
    for e in m["generation"]["engines"].values():
        expected.append(f"| {e['label']} | {size(e['weights_bytes'])} | {size(e['rss_delta_bytes'])} | "
                        f"{e['load_seconds']:.3f} s | {e['avg_latency_s']:.3f} s | {e['avg_tokens_per_s']:,.2f} | "
                        f"{e['peak_tokens_per_s']:,.2f} |")
        for r in e["runs"]:
            assert len(json.dumps(r["text"])) <= 60  # 8 tokens of a tiny model: the cell shows all of it
            expected.append(f"| {r['prompt']} | {r['input_tokens']} | {r['output_tokens']} | {r['latency_s']:.3f} s | "
                            f"{r['first_token_s']:.3f} s | {r['tokens_per_s']:,.2f} | "
                            f"{json.dumps(r['text'], ensure_ascii=False).replace('|', chr(92) + '|')} |")
    assert sorted(m["gguf"]) == (["f32", "q8_0"] if LLAMA else [])
    if LLAMA:
        expected.append("| Type | File | Size | Bits per weight | Perplexity | Ratio to float checkpoint | Mean KLD | "
                        "99% KLD | Same top token |")
    assert set(expected) <= lines(md)


def synthetic_rows(losses: list[float], stages: list[str]) -> list[TrainRow]:
    """metrics.jsonl rows of a curriculum run (stages, no phases), half a second per step."""
    return [TrainRow.model_validate_json(json.dumps(
        {"step": i + 1, "phase": None, "stage": stage, "loss": loss, "ce": loss, "kd": None, "lr": 1e-3,
         "grad_norm": 1.0, "tokens": 64, "tokens_per_s": 128.0, "val_loss": None, "wall_time": 0.5 * (i + 1)}))
            for i, (loss, stage) in enumerate(zip(losses, stages))]


def test_segments_spikes_and_the_text_curve():
    rows = synthetic_rows([2.0, 2.1, 2.5, 2.0, 2.21, 1.5], ["a", "a", "a", "b", "b", "b"])
    assert report_builder.segments(rows, "phase") == []
    assert report_builder.segments(rows, "stage") == [
        {"name": "a", "first_step": 1, "last_step": 3, "steps": 3, "seconds": 1.5, "duration": "1.5 s",
         "loss_start": 2.0, "loss_end": 2.5, "reduction": -0.5, "reduction_share": -0.25},
        {"name": "b", "first_step": 4, "last_step": 6, "steps": 3, "seconds": 1.5, "duration": "1.5 s",
         "loss_start": 2.0, "loss_end": 1.5, "reduction": 0.5, "reduction_share": 0.25}]
    c = report_builder.convergence(rows)
    # 2.5 > 2.1 + 10% and 2.21 > 2.0 + 10%; 2.1 is only 5% above 2.0
    assert [(s["step"], s["previous"], s["loss"]) for s in c["spikes"]] == [(3, 2.1, 2.5), (5, 2.0, 2.21)]
    assert (c["initial"], c["final"], c["min_loss"], c["min_step"]) == (2.0, 1.5, 1.5, 6)
    assert c["mean_change"] == pytest.approx(-0.1)
    curve = report_builder.curve(rows, 3)  # every ceil(5 / 2) = 3 steps: 1, 4, and the last
    assert curve["every"] == 3
    assert curve["text"] == ("1    2.0000  " + "█" * 40 + "  a\n4    2.0000  " + "█" * 40 + "  b\n"
                             "6    1.5000  " + "█" * 30 + " " * 12 + "b")
    assert [report_builder.duration(s) for s in (0.04, 59.94, 61, 3725)] == ["0.0 s", "59.9 s", "1 min 01 s",
                                                                               "1 h 02 min"]


def test_curriculum_stages_render(project, tmp_path):
    job = report_job(project, tmp_path / "out")
    context = report_builder.report_context(job, entries.read_train_rows(entry(project, "student")))
    context["train"]["stages"] = report_builder.segments(
        synthetic_rows([2.0, 2.1, 2.5, 2.0, 2.21, 1.5], ["a", "a", "a", "b", "b", "b"]), "stage")
    md = report_builder.render(job, context)
    assert "### Curriculum stages\n\n| Stage | Steps | Duration | Loss start | Loss end | Reduction |\n" \
           "|---|---|---:|---:|---:|---:|\n| a | 1–3 (3) | 1.5 s | 2.0000 | 2.5000 | -0.5000 (-25.00%) |\n" \
           "| b | 4–6 (3) | 1.5 s | 2.0000 | 1.5000 | 0.5000 (25.00%) |\n\n## Distillation\n" in md


def test_a_generated_text_becomes_one_safe_table_cell():
    assert report_builder.cell("a | b\n<script>") == '"a \\| b\\n&lt;script&gt;"'
    assert report_builder.cell("x" * 100) == '"' + "x" * 57 + '…"'


# ---------------------------------------------------------------- template errors

CAN_USE = ("a report template can use artifacts, aux, compared, compared_table, config, distill, environment, evaluation, "
           "exports, loss_data, model, params, quantizations, report, train")


def test_an_undefined_variable_fails_the_build_naming_file_and_line(project):
    path = project.root / TEMPLATE
    original = path.read_text()
    entries = sorted(p.name for p in (project.root / "build" / "store").iterdir())
    link = os.readlink(project.root / "build" / "main" / "report")
    try:
        path.write_text(original.replace("## Executive summary\n", "## Executive summary\n{{ train.no_such_field }}\n"))
        result = project.doit(check=False)
    finally:
        path.write_text(original)
    line = original.splitlines().index("## Executive summary") + 2
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout.endswith(
        ".  main.report\nTaskFailed - taskid:main.report\n"
        f"main.report: {TEMPLATE}:{line}: undefined variable: 'dict object' has no attribute 'no_such_field'; "
        f"{CAN_USE}\n\n")
    # nothing was added to the store, and the report link still shows the last good report
    assert sorted(p.name for p in (project.root / "build" / "store").iterdir()) == entries
    assert os.readlink(project.root / "build" / "main" / "report") == link


def template_error(project: Project, tmp_path: Path, text: str) -> str:
    """The BuildError of rendering `text` as the report's template (a file beside the default one)."""
    name = f"specs/templates/{tmp_path.name}.md.jinja"
    (project.root / name).write_text(text)
    try:
        with pytest.raises(BuildError) as caught:
            report_builder.build(report_job(project, Path(tempfile.mkdtemp(dir=tmp_path)) / "out", template=name))
    finally:
        (project.root / name).unlink()
    return str(caught.value).replace(name, "TEMPLATE")


def test_undefined_names_and_attributes_name_the_line(project, tmp_path):
    assert template_error(project, tmp_path, "# Report\n\nLoss {{ train.final_loss | fixed }}\n{{ foo }}\n") == (
        f"TEMPLATE:4: undefined variable: 'foo' is undefined; {CAN_USE}")
    assert template_error(project, tmp_path, "{% for p in train.phases %}\n{{ p.nmae }}\n{% endfor %}\n") == (
        f"TEMPLATE:2: undefined variable: 'dict object' has no attribute 'nmae'; {CAN_USE}")


def test_the_sandbox_refuses_python_internals(project, tmp_path):
    assert template_error(project, tmp_path, "# Report\n{{ ''.__class__ }}\n") == (
        "TEMPLATE:2: refused by the sandbox: access to attribute '__class__' of 'str' object is unsafe.")
    assert template_error(project, tmp_path, "a\nb\n{{ ().__class__.__subclasses__() }}\n") == (
        "TEMPLATE:3: refused by the sandbox: access to attribute '__class__' of 'tuple' object is unsafe.")
    assert template_error(project, tmp_path, "{{ report.plots.loss.format.__globals__ }}\n") == (
        "TEMPLATE:1: refused by the sandbox: access to attribute '__globals__' of 'function' object is unsafe.")


def test_other_errors_inside_the_template_name_the_line_too(project, tmp_path):
    assert template_error(project, tmp_path, "# Report\n\n{{ train.final_val_loss | fixed }}\n"
                                             "{{ report.id | fixed }}\n") == (
        "TEMPLATE:4: ValueError: Unknown format code 'f' for object of type 'str'")


def test_a_template_syntax_error_stops_compilation(project):
    path = project.root / TEMPLATE
    original = path.read_text()
    try:
        path.write_text(original.replace("{% endfor %}", "{% endfro %}", 1))
        result = project.doit("list", check=False)
    finally:
        path.write_text(original)
    line = next(n for n, text in enumerate(original.splitlines(), 1) if "{% endfor %}" in text)
    step = project.read("specs/pipelines/main.yaml").splitlines().index("  report:") + 1
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "ingot: 1 problem found; nothing was built\n"
        f"specs/pipelines/main.yaml:{step}: steps.report.template: expected a Jinja template that parses; found {TEMPLATE}:"
        f"{line}: TemplateSyntaxError: Encountered unknown tag 'endfro'. Jinja was looking for the following tags: "
        "'endfor' or 'else'. The innermost block that needs to be closed is 'for'.\n"
        f"  fix: fix the template at {TEMPLATE}:{line}\n")


# ---------------------------------------------------------------- stable output

def test_rendering_the_same_inputs_again_gives_the_same_bytes(project, tmp_path):
    """Twice here and once by `doit` in another process, earlier: byte for byte the same files."""
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        report_builder.build(report_job(project, out))
    built = entry(project, "report")
    for name in OUTPUTS:
        first = (outs[0] / name).read_bytes()
        assert (outs[1] / name).read_bytes() == first, name
        assert (built / name).read_bytes() == first, name
    assert sorted(p.name for p in outs[0].iterdir()) == OUTPUTS


def test_the_html_page_embeds_the_plots(project):
    page = (entry(project, "report") / "report.html").read_text()
    for name in ("loss.png", "lr.png"):
        uri = "data:image/png;base64," + base64.b64encode((entry(project, "report") / name).read_bytes()).decode()
        assert page.count(f'src="{uri}"') == 1, name
    assert page.startswith('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                           "<title>Training report: student</title>\n<style>\n")
    assert page.endswith("</body>\n</html>\n")
    assert 'src="loss.png"' not in page and "<table>" in page and '<code class="language-json">' in page


# ---------------------------------------------------------------- sections that do not apply

def test_a_pretraining_run_without_evaluation_still_renders(project, tmp_path):
    """The teacher (pretrained, no teachers of its own), with no evaluate step and no export; and
    its manifest stripped of the environment fields older builds did not record."""
    old = tmp_path / "old-teacher"
    shutil.copytree(entry(project, "teacher"), old, copy_function=os.link)
    m = json.loads((old / "manifest.json").read_text())
    m["environment"] = {k: m["environment"][k] for k in ("python", "platform", "machine")}
    (old / "manifest.json").unlink()  # a hard link: write a new file, not through the store's
    (old / "manifest.json").write_text(json.dumps(m))
    job = report_job(project, tmp_path / "out", inputs={"train": "teacher"}, model="teacher", train="teacher",
                     evaluate=None, exports=())
    job.inputs[TRAIN] = old
    report_builder.build(job)
    md = (tmp_path / "out" / "report.md").read_text()
    rows = metrics_rows(project, "teacher")
    assert [line for line in md.splitlines() if line.startswith("## ")] == SECTIONS
    assert {"Does not apply: `main.teacher` trained with objective `pretrain`, without teachers.",
            "| Teachers distilled | none: not a distillation run |",
            "| Validation perplexity | not measured: no evaluate step |",
            "Does not apply: this report names no evaluate step, so there is no perplexity, GGUF or generation "
            "measurement.", "Does not apply: no evaluate step.",
            "Does not apply: the report names no GGUF export, and no evaluate step measured GGUF files.",
            f"| Total parameters | {params.count(model_spec('teacher')):,} |",
            f"| Final training loss | {rows[-1]['loss']:.4f} |", "- Multi-head attention: each of the 4 query heads "
            "has its own key/value head (no grouping)", "| CPU | not recorded |", "| Logical cores | not recorded |",
            "| RAM | not recorded |", "| GPU | not recorded |", "| torch | not recorded |",
            "| transformers | not recorded |", f"| Python | {m['environment']['python']} |"} <= lines(md)
    artifacts = md.split("## Output artifacts\n")[1].split("Built from:")[0].strip().splitlines()
    weights = (old / "model.safetensors").read_bytes()
    assert artifacts[2:] == [f"| main.teacher | model.safetensors | {size(len(weights))} ({len(weights):,} bytes) | "
                             f"`{hashlib.sha256(weights).hexdigest()}` |"]


def test_gguf_files_without_an_evaluation_are_listed_unmeasured(project, tmp_path):
    job = report_job(project, tmp_path / "out", evaluate=None, exports=("gguf",),
                     inputs={"train": "student", "teacher.teacher": "teacher", "teacher.helper": "helper",
                             "export.gguf": "gguf"})
    report_builder.build(job)
    md = (tmp_path / "out" / "report.md").read_text()
    files = manifest(project, "gguf")["metrics"]["files"]
    assert "No evaluate step measured these files, so there is no perplexity." in md
    assert {f"| {t} | main.gguf | {f['file']} | {size(f['bytes'])} | {f['bits_per_weight']:.2f} | "
            f"{f['parameters']:,} |" for t, f in files.items()} <= lines(md)


def test_teacher_sizes_from_folders_and_hub_ids(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    folder = tmp_path / "teachers" / "local"
    folder.mkdir(parents=True)
    save_file({"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float16)}, str(folder / "model-1.safetensors"))
    save_file({"c": np.zeros((2, 2, 2), np.float32)}, str(folder / "model-2.safetensors"))
    (tmp_path / "teachers" / "empty").mkdir()
    job = Job("main.report", None, tmp_path / "out", root=tmp_path)
    source = {"step": None, "path": None, "hub": None}
    assert report_builder.teacher_parameters(job, "local", {**source, "path": "teachers/local"}) == (
        25, "folder teachers/local")
    assert report_builder.teacher_parameters(job, "empty", {**source, "path": "teachers/empty"}) == (
        None, "folder teachers/empty")
    assert report_builder.teacher_parameters(job, "big", {**source, "hub": "org/big-model"}) == (
        None, "hub org/big-model")


# ---------------------------------------------------------------- the page in a browser

CHROMIUM = "/usr/bin/chromium"


def screenshot(page: Path, png: Path, tmp_path: Path):
    """What headless Chromium draws of `page` in a window 1200 pixels wide and tall enough for
    the whole report, as an RGB array."""
    import numpy as np
    from PIL import Image

    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium'}", "--hide-scrollbars", "--window-size=1200,12000",
                    f"--screenshot={png}", page.as_uri()], check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def colour_pixels(image, colour: str, tolerance: int = 8) -> int:
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    return int((abs(image - rgb).max(axis=-1) <= tolerance).sum())


def test_chromium_draws_the_loss_plot(project, tmp_path):
    """The first phase's line has a colour nothing else on the page has: many pixels of it in the
    page, none in a copy whose loss plot has lost its data: URI."""
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    built = entry(project, "report")
    page = (built / "report.html").read_text()
    uri = "data:image/png;base64," + base64.b64encode((built / "loss.png").read_bytes()).decode()
    control = tmp_path / "control.html"
    control.write_text(page.replace(uri, ""))
    shown = screenshot(built / "report.html", tmp_path / "page.png", tmp_path)
    missing = screenshot(control, tmp_path / "control.png", tmp_path)
    first_phase = report_builder.SEGMENT_COLOURS[0]
    assert colour_pixels(shown, first_phase) > 300
    assert colour_pixels(missing, first_phase) == 0
    assert (shown[-1] == 255).all()  # the window is taller than the page: all of it was drawn
