"""Report builder: a training report rendered from the artifacts a report step names.

Reads: the train entry (`job.inputs[TRAIN]`): its manifest.json (spec, metrics,
environment, timings), metrics.jsonl, config.json and the header of model.safetensors;
each step teacher's entry (`teacher.NAME`, the header of its model.safetensors) or a
`path:` teacher's folder (its *.safetensors headers); the evaluate entry's metrics.json
(`evaluate`, when the step names one); each export entry (`export.STEP`: its manifest and
every file it lists, hashed with SHA-256); the model spec (`job.models["model"]`); and the
Jinja template `job.spec.template` (relative to the project root). Manifests, metrics.jsonl
and metrics.json are read typed, through `compiler.entries` (`TrainEntry`, `TrainRow`,
`ExportEntry`, `EvaluationResults`).

Writes: `report.md`, the template rendered in `compiler.templates`' sandbox over a context
of plain dicts built here (every sum, ratio and duration is computed here; the template only
formats); `report.html`, that Markdown as a standalone page with the plots embedded as
data: URIs; `loss.png` and `lr.png` (matplotlib, Agg). The only time shown is the train
run's recorded one, so the same inputs render the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
import traceback
from datetime import datetime, timezone
from pathlib import Path

from compiler import entries, params, templates
from compiler.entries import Environment, ExportEntry, GgufMetrics, TrainEntry, TrainMetrics, TrainRow
from compiler.inputs import EVALUATE, TRAIN, Input, Role, export, teacher
from targets import BuildError, Job, plugins, safetensors_header

OUTPUTS = ("report.md", "report.html", "loss.png", "lr.png")
PLOTS = {"loss": "loss.png", "lr": "lr.png"}
SPIKE = 0.10        # a spike: a step whose loss exceeds the previous step's by more than this fraction
BAR_WIDTH = 40      # characters of the longest bar of the text loss curve
FIGSIZE, DPI = (8.0, 4.5), 100  # 800 x 450 pixels: shown at natural size in the HTML page
# one colour per phase (or stage) of the loss curve: saturated, and used nowhere else on the page
SEGMENT_COLOURS = ("#e6007e", "#0072b2", "#009e73", "#d55e00", "#7b3294", "#56b4e9")
VALIDATION_COLOUR, BOUNDARY_COLOUR, LR_COLOUR = "#000000", "#808080", "#333333"
NOT_RECORDED = "not recorded"


def build(job: Job) -> dict:
    train = job.inputs[TRAIN]
    rows = entries.read_train_rows(train)
    if not rows:
        raise BuildError(f"{train / entries.TRAIN_ROWS}: the train entry's metrics.jsonl has no rows; nothing to "
                         "report on")
    context = report_context(job, rows)
    markdown_text = render(job, context)
    (job.out / "report.md").write_text(markdown_text, encoding="utf-8")
    segments = context["train"]["segments"]
    plot_loss(rows, segments, job.out / PLOTS["loss"])
    plot_lr(rows, job.out / PLOTS["lr"])
    images = {name: job.out / name for name in PLOTS.values()}
    (job.out / "report.html").write_text(html_page(markdown_text, context["report"]["id"], images), encoding="utf-8")
    sections = sum(1 for line in markdown_text.splitlines() if line.startswith("## "))
    sizes = {name: (job.out / name).stat().st_size for name in OUTPUTS}
    job.log(f"report {context['report']['id']}: {sections} sections, report.md {sizes['report.md']:,} bytes, "
            f"report.html {sizes['report.html']:,} bytes")
    return {"id": context["report"]["id"], "template": job.spec.template, "sections": sections, "bytes": sizes}


# ---------------------------------------------------------------- context

def report_context(job: Job, rows: list[TrainRow]) -> dict:
    """Everything the template may show, as plain data (dicts, lists, strings, numbers)."""
    train_dir = job.inputs[TRAIN]
    manifest = entries.load(train_dir, TrainEntry)
    spec, model = manifest.spec, job.models["model"]
    config = json.loads((train_dir / "config.json").read_text())
    header, _ = safetensors_header(train_dir / "model.safetensors")
    train = train_context(manifest, rows, job.spec.loss_rows)
    hashes = Sha256()
    exports = [export_context(job, ref, hashes) for ref in job.spec.exports]
    evaluation = evaluation_context(job.inputs[EVALUATE]) if EVALUATE in job.inputs else None
    weights = train_dir / "model.safetensors"
    artifacts = [{"step": manifest.task, "file": "model.safetensors", "bytes": weights.stat().st_size,
                  "sha256": hashes(weights)}]
    artifacts += [{"step": e["task"], **f} for e in exports for f in e["files"]]
    sources = [{"role": str(field), "task": m.task, "key": m.key}
               for field, m in ((f, entries.load(folder)) for f, folder in sorted(job.inputs.items()))]
    return {
        "report": {"id": job.key[:12], "key": job.key, "task": job.task, "template": job.spec.template,
                   "sources": sources, "spike_threshold": SPIKE, "plots": dict(PLOTS)},
        "model": model_context(model, config, header, spec),
        "params": params_context(model, header),
        "environment": environment_context(manifest.environment, manifest.metrics),
        "train": train,
        "distill": distill_context(job, manifest, train["phases"]) if spec.get("distill") else None,
        "evaluation": evaluation,
        "quantizations": quantizations(evaluation, exports),
        "exports": exports,
        "artifacts": artifacts,
        "loss_data": [{"step": r.step, "phase": r.phase, "stage": r.stage, "loss": r.loss, "val_loss": r.val_loss,
                       "lr": r.lr} for r in rows],
        "aux": aux_context([json.loads(line) for line in (train_dir / entries.TRAIN_ROWS).read_text().splitlines()]),
        "compared": (compared := compared_context(job)),
        "compared_table": compared_table(compared),
        "config": config,
    }


def model_context(m, config: dict, header: dict, spec: dict) -> dict:
    return {
        "name": m.name, "architecture": m.architecture, "plugin": plugins.is_plugin(m.architecture),
        "options": dict(getattr(m, "options", None) or {}), "hf_architecture": ", ".join(config.get("architectures", [])),
        "hidden_size": m.hidden_size, "intermediate_size": m.intermediate_size, "layers": m.layers,
        "heads": m.heads, "kv_heads": m.kv_heads, "head_dim": m.head_dim, "vocab_size": m.vocab_size,
        "max_positions": m.max_positions, "rope_theta": m.rope_theta, "rms_norm_eps": m.rms_norm_eps,
        "tie_embeddings": m.tie_embeddings, "gqa": m.kv_heads < m.heads,
        "gqa_ratio": m.heads // m.kv_heads if m.heads % m.kv_heads == 0 else m.heads / m.kv_heads,
        "ffn_ratio": m.intermediate_size / m.hidden_size,
        "attention_width": m.heads * m.head_dim, "kv_width": m.kv_heads * m.head_dim,
        "hidden_act": config.get("hidden_act", NOT_RECORDED),
        "train_dtype": spec.get("dtype", NOT_RECORDED),
        "stored_dtypes": ", ".join(sorted({t["dtype"] for t in header.values()})),
    }


def params_context(m, header: dict) -> dict:
    """Exact counts from the model spec (compiler.params), grouped and per tensor of one layer,
    with shares; and the count of the tensors actually stored, read from the weights' header.
    A plug-in architecture's counts are those of its stored tensors, grouped by top-level module."""
    if plugins.is_plugin(m.architecture):
        return _stored_params(header)
    parts = params.breakdown(m)
    total = params.count(m)
    per_layer = params.layer_tensors(m)

    def group(prefixes: tuple[str, ...]) -> int:
        return sum(n for name, n in parts.items() if name.startswith(prefixes))

    groups = [("embedding", "token embedding (embed_tokens)", group(("embed_tokens",))),
              ("attention", f"attention (q, k, v, o projections of {m.layers} layers)", group(("layers.self_attn",))),
              ("mlp", f"feed-forward (SwiGLU gate, up, down of {m.layers} layers)", group(("layers.mlp",))),
              ("norms", f"RMSNorm weights ({2 * m.layers + 1} norms)", group(("layers.input_layernorm",
                                                                                "layers.post_attention_layernorm",
                                                                                "norm"))),
              ("lm_head", "LM head" + (" (tied to the embedding: no weights of its own)" if m.tie_embeddings else ""),
               group(("lm_head",)))]
    layer_total = sum(math.prod(s) for s in per_layer.values())
    return {
        "total": total,
        "stored": sum(math.prod(t["shape"]) for t in header.values()),
        "groups": [{"name": k, "label": label, "count": n, "share": n / total} for k, label, n in groups],
        "layer": [{"name": name, "shape": " × ".join(str(d) for d in shape), "count": math.prod(shape),
                   "share_of_layer": math.prod(shape) / layer_total, "all_layers": math.prod(shape) * m.layers,
                   "share": math.prod(shape) * m.layers / total} for name, shape in per_layer.items()],
        "layer_total": layer_total, "layers_total": layer_total * m.layers,
        "layers_share": layer_total * m.layers / total,
        "components": [{"name": k, "count": n, "share": n / total} for k, n in parts.items()],
    }


def _stored_params(header: dict) -> dict:
    """`params_context` of a plug-in: what `model.safetensors` holds, by top-level module."""
    groups: dict[str, int] = {}
    for name, t in header.items():
        groups[name.split(".")[0]] = groups.get(name.split(".")[0], 0) + math.prod(t["shape"])
    total = sum(groups.values())
    return {"total": total, "stored": total,
            "groups": [{"name": k, "label": f"`{k}`", "count": n, "share": n / total if total else 0.0}
                       for k, n in groups.items()],
            "layer": [], "layer_total": 0, "layers_total": 0, "layers_share": 0.0,
            "components": [{"name": k, "count": n, "share": n / total if total else 0.0} for k, n in groups.items()]}


def aux_context(rows: list[dict]) -> list[dict]:
    """A plug-in architecture's auxiliary metrics (each row's `aux`), per phase or stage (or the
    whole run): mean, first and last value. Empty for a model that reports none."""
    names = list(dict.fromkeys(k for r in rows for k in (r.get("aux") or {})))
    if not names:
        return []
    field = "phase" if any(r.get("phase") for r in rows) else "stage" if any(r.get("stage") for r in rows) else None
    segments: dict[str, list[dict]] = {}
    for r in rows:
        segments.setdefault((r.get(field) if field else None) or "training", []).append(r)
    out = []
    for segment, seg_rows in segments.items():
        for name in names:
            values = [r["aux"][name] for r in seg_rows if (r.get("aux") or {}).get(name) is not None]
            if values:
                out.append({"segment": segment, "metric": name, "mean": sum(values) / len(values),
                            "first": values[0], "last": values[-1]})
    return out


def environment_context(env: Environment, metrics: TrainMetrics) -> dict:
    """The train build's machine and software as display strings; a field an older build did
    not record says so."""

    def show(name: str, absent: str = "not installed") -> str:
        if not env.recorded(name):
            return NOT_RECORDED
        value = getattr(env, name)
        return absent if value is None else str(value)

    ram = env.ram_bytes
    return {
        "cpu": show("cpu"), "cpus": show("cpus"), "machine": show("machine"), "os": show("platform"),
        "ram": NOT_RECORDED if ram is None else f"{templates.size(ram)} ({ram:,} bytes)",
        "gpu": show("gpu", "none (no CUDA device)"), "python": show("python"),
        "torch": show("torch"), "transformers": show("transformers"), "tokenizers": show("tokenizers"),
        "gguf": show("gguf"), "llama_cpp_python": show("llama_cpp_python"),
        "device": metrics.device, "dtype": metrics.dtype,
    }


def train_context(manifest: TrainEntry, rows: list[TrainRow], loss_rows: int) -> dict:
    metrics, spec, timings = manifest.metrics, manifest.spec, manifest.timings
    phases, stages = segments(rows, "phase"), segments(rows, "stage")
    vals = [{"step": r.step, "val_loss": r.val_loss} for r in rows if r.val_loss is not None]
    seconds = metrics.seconds
    return {
        "task": manifest.task, "key": manifest.key, "spec": spec, "objective": spec["objective"],
        "steps": len(rows), "total_steps": metrics.total_steps,
        "stopped_early": metrics.stopped_early, "resumed_from": metrics.resumed_from,
        "tokens_seen": metrics.tokens_seen, "tokens_per_step": rows[0].tokens,
        "sequences_per_step": spec["batch_size"] * spec["grad_accum"],
        "seconds": seconds, "duration": duration(seconds),
        "tokens_per_s": metrics.tokens_seen / seconds if seconds else None,
        "step_tokens_per_s": sum(r.tokens_per_s for r in rows) / len(rows),
        "started": utc(timings.started), "finished": utc(timings.finished),
        "build_seconds": timings.seconds, "build_duration": duration(timings.seconds),
        "final_loss": rows[-1].loss, "final_val_loss": vals[-1]["val_loss"] if vals else None,
        "best_val_loss": min(v["val_loss"] for v in vals) if vals else None,
        "validation": vals, "phases": phases, "stages": stages,
        "segments": phases or stages or [_segment("training", rows, 0.0)],
        "lr_max": max(r.lr for r in rows), "lr_final": rows[-1].lr,
        "convergence": convergence(rows), "curve": curve(rows, loss_rows),
    }


# the fields of a metrics row that are not a metric of the model (what `compared` leaves out of `last`)
ROW_FIELDS = {"step", "phase", "stage", "lr", "tokens", "tokens_per_s", "wall_time", "loss", "val_loss", "ce", "kd",
              "kd_teachers", "grad_norm"}


def compared_context(job: Job) -> list[dict]:
    """The train step reported on and each of `compare`, one row each, in the listed order: the
    run's figures and the last value of every other numeric metric of its metrics.jsonl (a
    plug-in architecture's auxiliary metrics, say). Empty without `compare`."""
    if not job.spec.compare:
        return []
    pipeline = job.task.partition(".")[0]
    folders = [job.inputs[TRAIN]] + [job.inputs[Input(Role.COMPARE, ref if "." in ref else f"{pipeline}.{ref}")]
                                     for ref in job.spec.compare]
    out = []
    for folder in folders:
        manifest = entries.load(folder, TrainEntry)
        m = manifest.metrics
        lines = (folder / entries.TRAIN_ROWS).read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        pipeline = manifest.task.partition(".")[0]
        out.append({"task": manifest.task, "variant": pipeline.partition("@")[2] or None,
                    "parameters": m.parameters, "steps": m.steps, "tokens_seen": m.tokens_seen,
                    "final_loss": m.final_loss, "final_val_loss": m.final_val_loss,
                    "best_val_loss": m.best_val_loss, "seconds": m.seconds, "duration": duration(m.seconds),
                    "last": dict(sorted(_numbers(last).items()))})
    return out


def compared_table(compared: list[dict]) -> dict:
    """`compared` as a table: its header and rows of cells (Markdown-ready strings)."""
    extra = list(dict.fromkeys(k for c in compared for k in c["last"]))

    def num(v, form):
        return "–" if v is None else format(v, form)

    return {"header": ["Step", "Parameters", "Steps", "Tokens", "Final loss", "Final val. loss", "Best val. loss",
                       "Training time"] + extra,
            "rows": [[c["task"], f"{c['parameters']:,}", str(c["steps"]), f"{c['tokens_seen']:,}",
                      num(c["final_loss"], ".4f"), num(c["final_val_loss"], ".4f"), num(c["best_val_loss"], ".4f"),
                      c["duration"]] + [num(c["last"].get(k), ".4g") for k in extra] for c in compared]}


def _numbers(row: dict, prefix: str = "") -> dict[str, float]:
    """The numeric metrics of a metrics row, one level of nesting named `outer.inner`."""
    out = {}
    for k, v in row.items():
        if not prefix and k in ROW_FIELDS:
            continue
        if isinstance(v, dict) and not prefix:
            out.update(_numbers(v, f"{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = v
    return out


def segments(rows: list[TrainRow], field: str) -> list[dict]:
    """Consecutive runs of steps with the same phase (or stage) name, each with its steps,
    duration (from the rows' cumulative wall_time) and loss at its first and last step."""
    out, start, before = [], 0, 0.0
    for i, row in enumerate(rows):
        name = getattr(row, field)  # phase or stage
        if i + 1 == len(rows) or getattr(rows[i + 1], field) != name:
            if name is not None:
                out.append(_segment(name, rows[start:i + 1], before))
            start, before = i + 1, row.wall_time
    return out


def _segment(name: str, rows: list[TrainRow], before: float) -> dict:
    first, last = rows[0], rows[-1]
    seconds = last.wall_time - before
    return {"name": name, "first_step": first.step, "last_step": last.step, "steps": len(rows),
            "seconds": seconds, "duration": duration(seconds),
            "loss_start": first.loss, "loss_end": last.loss, "reduction": first.loss - last.loss,
            "reduction_share": (first.loss - last.loss) / first.loss if first.loss else None}


def convergence(rows: list[TrainRow]) -> dict:
    """Initial and final loss, their difference, the mean change per step, the lowest loss, and
    the spikes: steps whose loss exceeds the previous step's by more than SPIKE of it."""
    first, last = rows[0].loss, rows[-1].loss
    spikes = [{"step": b.step, "loss": b.loss, "previous": a.loss, "rise": b.loss / a.loss - 1}
              for a, b in zip(rows, rows[1:]) if b.loss > a.loss * (1 + SPIKE)]
    low = min(rows, key=lambda r: r.loss)
    return {"initial": first, "final": last, "initial_step": rows[0].step, "final_step": rows[-1].step,
            "reduction": first - last,
            "reduction_share": (first - last) / first if first else None,
            "mean_change": (last - first) / (len(rows) - 1) if len(rows) > 1 else None,
            "min_loss": low.loss, "min_step": low.step, "spikes": spikes}


def curve(rows: list[TrainRow], most: int) -> dict:
    """At most `most` rows of the loss: step 1, every `every` steps after it, and the last step;
    with a bar of BAR_WIDTH characters for the largest loss, the others in proportion."""
    every = max(1, math.ceil((len(rows) - 1) / (most - 1)))
    picked = rows[::every]
    if picked[-1] is not rows[-1]:
        picked.append(rows[-1])
    top = max(r.loss for r in picked)
    width = len(str(rows[-1].step))
    out = []
    for r in picked:
        bar = "█" * max(1, round(BAR_WIDTH * r.loss / top)) if top > 0 else ""
        label = r.phase or r.stage or ""
        out.append({"step": r.step, "loss": r.loss, "bar": bar, "segment": label,
                    "line": f"{r.step:>{width}}  {r.loss:8.4f}  {bar:<{BAR_WIDTH}}  {label}".rstrip()})
    return {"every": every, "rows": out, "text": "\n".join(r["line"] for r in out)}


LOSS_FORMS = {"same": "KL(softmax(t/T) ‖ softmax(s/T)) · T², token by token",
              "uld": "Σ |sorted merged p_t − sorted merged p_s| (ULD's L1), over aligned groups",
              "map": "KL over the student ids the teacher's tokens map onto (and the rest) · T², over aligned groups"}


def distill_context(job: Job, manifest: TrainEntry, phases: list[dict]) -> dict:
    spec, metrics = manifest.spec, manifest.metrics
    d = spec["distill"]
    names = [p["name"] or f"phase {i + 1}" for i, p in enumerate(d["phases"])]  # as the train builder names them
    by_name = dict(zip(names, d["phases"]))
    teachers = []
    for name, source in d["teachers"].items():
        count, where = teacher_parameters(job, name, source)
        read = metrics.teachers.get(name)
        align = read.align if read else source.get("align") or "same"
        teachers.append({"name": name, "source": where, "parameters": count, "align": align,
                         "loss_form": LOSS_FORMS[align], "stored": read.stored if read else None,
                         "top_k": read.top_k if read else None, "windows": read.windows if read else None,
                         "coverage": read.coverage if read else None, "mapped": read.mapped if read else None,
                         "weights": [{"phase": n, "weight": p["teachers"].get(name)} for n, p in by_name.items()]})
    schedule = [{**seg, "teachers": [{"name": t, "weight": w} for t, w in by_name[seg["name"]]["teachers"].items()],
                 "planned_steps": by_name[seg["name"]]["steps"]} for seg in phases]
    t, alpha = d["temperature"], d["alpha"]
    return {"temperature": t, "alpha": alpha, "ce_weight": round(1 - alpha, 12), "t_squared": round(t * t, 12),
            "teachers": teachers, "phases": schedule, "phase_names": names,
            "aligns": sorted({x["align"] for x in teachers}), "losses": phase_losses(metrics.phases, alpha)}


def phase_losses(phases: list[dict], alpha: float) -> list[dict]:
    """Per phase, the loss and its parts at its first and last step, as the train builder's
    metrics give them: each teacher's weighted KD term, the KD sum, the CE and the total
    (α · KD + (1 − α) · CE)."""
    out = []
    for p in phases:
        start, end = p.get("kd_teachers_start") or {}, p.get("kd_teachers_end") or {}
        rows = [{"part": f"KD {name} (weighted)", "start": start[name], "end": end.get(name)} for name in sorted(start)]
        rows += [{"part": "KD, all teachers", "start": p.get("kd_start"), "end": p.get("kd_end")},
                 {"part": "CE", "start": p.get("ce_start"), "end": p.get("ce_end")},
                 {"part": f"Total = {alpha} · KD + {round(1 - alpha, 12)} · CE", "start": p["loss_start"],
                  "end": p["loss_end"]}]
        out.append({"name": p["name"], "first_step": p["first_step"], "last_step": p["last_step"], "rows": rows})
    return out


def teacher_parameters(job: Job, name: str, source: dict) -> tuple[int | None, str]:
    """(exact parameter count or None when not known, where the teacher comes from): summed over
    the tensor shapes in the safetensors headers, which are read and nothing else."""
    if teacher(name) in job.inputs:
        entry = job.inputs[teacher(name)]
        return _header_count([entry / "model.safetensors"]), f"step {entries.load(entry).task}"
    if source.get("path") is not None:
        files = sorted((Path(job.root) / source["path"]).glob("*.safetensors"))
        return (_header_count(files) if files else None), f"folder {source['path']}"
    return None, f"hub {source['hub']}"


def _header_count(files: list[Path]) -> int:
    return sum(math.prod(t["shape"]) for f in files for t in safetensors_header(f)[0].values())


def evaluation_context(folder: Path) -> dict:
    """The evaluate entry's metrics.json, with its tables as lists (engines and GGUF types carry
    their names) and each generated text cut to a table cell."""
    m = entries.read_evaluation(folder)
    checkpoint = {**m.checkpoint.model_dump(),
                  "bits_per_weight": 8 * m.checkpoint.weights_bytes / m.checkpoint.parameters}
    gen = m.generation
    engines = [{"name": name, **e.model_dump(exclude={"runs"}),
                "runs": [{**r.model_dump(), "cell": cell(r.text)} for r in e.runs]}
               for name, e in gen.engines.items()]
    return {"task": entries.load(folder).task, "data": m.data.model_dump(), "checkpoint": checkpoint,
            "gguf": [{"type": t, **row.model_dump()} for t, row in m.gguf.items()],
            "generation": {"max_new_tokens": gen.max_new_tokens, "prompts": [p.model_dump() for p in gen.prompts],
                           "engines": engines}}


def export_context(job: Job, ref: str, hashes: "Sha256") -> dict:
    folder = job.inputs[export(ref)]
    manifest = entries.load(folder, ExportEntry)
    files = [{"file": name, "bytes": (folder / name).stat().st_size, "sha256": hashes(folder / name)}
             for name in sorted(manifest.outputs)]
    found = manifest.metrics.files if isinstance(manifest.metrics, GgufMetrics) else {}
    gguf = [{"type": t, **facts.model_dump(exclude={"tensors", "histogram"})} for t, facts in found.items()]
    return {"step": ref, "task": manifest.task, "format": manifest.spec.get("format", "hf"),
            "files": files, "bytes": sum(f["bytes"] for f in files), "gguf": gguf}


def quantizations(evaluation: dict | None, exports: list[dict]) -> dict:
    """The GGUF table: measured by the evaluate step when it measured GGUF files, else the files
    of the GGUF exports with their sizes only."""
    if evaluation and evaluation["gguf"]:
        return {"measured": True, "rows": evaluation["gguf"]}
    rows = [{**g, "step": e["task"]} for e in exports for g in e["gguf"]]
    return {"measured": False, "rows": rows}


class Sha256:
    """SHA-256 of files, streamed; a file hard-linked into several entries is read once."""

    def __init__(self):
        self.seen: dict[tuple[int, int], str] = {}

    def __call__(self, path: Path) -> str:
        st = path.stat()
        if (st.st_dev, st.st_ino) not in self.seen:
            with open(path, "rb") as f:
                self.seen[st.st_dev, st.st_ino] = hashlib.file_digest(f, "sha256").hexdigest()
        return self.seen[st.st_dev, st.st_ino]


def cell(text: str, most: int = 60) -> str:
    """Generated text as one Markdown table cell: a JSON string (whitespace and newlines stay
    visible), cut to `most` characters, HTML escaped and without a bare pipe."""
    quoted = json.dumps(text, ensure_ascii=False)
    quoted = quoted if len(quoted) <= most else quoted[: most - 2] + "…\""
    return html.escape(quoted, quote=False).replace("|", "\\|")


def duration(seconds: float) -> str:
    """'12.3 s', '4 min 05 s', '2 h 03 min'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s // 60 % 60:02d} min"


def utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---------------------------------------------------------------- rendering

def render(job: Job, context: dict) -> str:
    """The template rendered over `context`; an undefined variable, a sandbox refusal or any
    other error raised inside the template names the template file and line."""
    path = Path(job.root) / job.spec.template
    template = templates.environment(path.parent).get_template(path.name)
    try:
        return template.render(context)
    except Exception as exc:
        from jinja2.exceptions import SecurityError, UndefinedError

        where = _template_line(exc, path.parent, Path(job.root))
        if where is None:
            raise
        if isinstance(exc, UndefinedError):
            raise BuildError(f"{where}: undefined variable: {exc.message}; a report template can use "
                             f"{', '.join(sorted(context))}") from None
        if isinstance(exc, SecurityError):
            raise BuildError(f"{where}: refused by the sandbox: {exc.message}") from None
        raise BuildError(f"{where}: {type(exc).__name__}: {exc}") from None


def _template_line(exc: BaseException, folder: Path, root: Path) -> str | None:
    """`path:line` of the innermost traceback frame in a template file of `folder` (Jinja gives
    template frames the template's file name and line), path relative to the project root."""
    folder = folder.resolve()
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        file = Path(frame.filename)
        if file.is_absolute() and folder in file.resolve().parents and file.is_file():
            try:
                rel = file.resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                rel = str(file)
            return f"{rel}:{frame.lineno}"
    return None


def html_page(markdown_text: str, report_id: str, images: dict[str, Path]) -> str:
    """A standalone page: the Markdown as HTML (tables, fenced code), each `<img src="NAME">`
    of a written plot replaced by its bytes as a data: URI."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"], output_format="html")
    uris = {name: "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
            for name, path in images.items()}
    body = re.sub(r'(<img\b[^>]*?\bsrc=")([^"]*)(")', lambda m: m.group(1) + uris.get(m.group(2), m.group(2)) +
                  m.group(3), body)
    heading = next((line[2:].strip() for line in markdown_text.splitlines() if line.startswith("# ")), "")
    title = html.escape(heading or f"Training report {report_id}")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
            f"<style>\n{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


CSS = """body { font-family: system-ui, sans-serif; max-width: 960px; margin: 2em auto; padding: 0 1em;
       line-height: 1.45; color: #1a1a1a; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #cccccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; line-height: 1.2; }
code { font-family: ui-monospace, monospace; }
img { max-width: 100%; }
"""


# ---------------------------------------------------------------- plots

def _figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    return fig, fig.subplots()


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})  # no version string: same bytes


def plot_loss(rows: list[TrainRow], segs: list[dict], path: Path) -> None:
    """Training loss per step, one colour per phase (or stage), each joined to the previous
    one's last point, dashed lines at the boundaries, validation loss as points."""
    fig, ax = _figure()
    by_step = {r.step: r for r in rows}
    for i, seg in enumerate(segs):
        steps = list(range(seg["first_step"], seg["last_step"] + 1))
        if i:
            steps.insert(0, seg["first_step"] - 1)
            ax.axvline(seg["first_step"] - 0.5, color=BOUNDARY_COLOUR, linestyle="--", linewidth=1)
        ax.plot(steps, [by_step[s].loss for s in steps], color=SEGMENT_COLOURS[i % len(SEGMENT_COLOURS)],
                linewidth=2, marker="o" if len(steps) == 1 else None, label=f"loss: {seg['name']}")
    vals = [r for r in rows if r.val_loss is not None]
    if vals:
        ax.plot([r.step for r in vals], [r.val_loss for r in vals], linestyle="none", marker="o",
                markersize=6, color=VALIDATION_COLOUR, label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_lr(rows: list[TrainRow], path: Path) -> None:
    fig, ax = _figure()
    ax.plot([r.step for r in rows], [r.lr for r in rows], color=LR_COLOUR, linewidth=2,
            marker="o" if len(rows) == 1 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate")
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _save(fig, path)
