"""Train builder: pretrain, fine-tune or distill a Llama, Qwen2 or Mistral model on packed token streams, resumably.

Reads: the model spec (`job.models["model"]`) and, when the step starts from another
step, that `init` entry's `model.safetensors`; the `tokenizer` entry (special-token ids
for config.json); one `tokens.<dataset>` entry per dataset (train.bin / validation.bin,
memory-mapped; for `objective: sft` also their train.mask.bin / validation.mask.bin, so
the loss counts response tokens only); for distillation, each teacher of the current phase: a
step teacher through its stored outputs (`teacher_outputs.<name>~<dataset>~<seq_len>` entries,
targets/teacher.py: the teacher's top-k at the step's temperature for whole windows, which the
student then draws by index), or run live beside the student: the spec's `path:` folder or
`hub:` id (loaded without remote code), or a `teacher.<name>` entry given without stored outputs
(as bench/distill.py gives one, to compare). `teacher_forwards` in the metrics counts the live
teachers' forward passes: a student reading stored outputs runs none.

Writes: `model.safetensors` (float32) and `config.json` as the init step writes them, so
the result loads with `AutoModelForCausalLM.from_pretrained` and can start or teach another
step; `metrics.jsonl` (one line per optimizer step); `checkpoints/step-NNNNNN/` (the last
`keep` and the best by validation loss); `tensorboard/<task>/` (targets/tracking.py: every
metric as TensorBoard scalars; with `tracking: {mlflow: ...}`, an MLflow run too).

With `lora:` the `init` weights stay frozen and peft adapters train (targets/lora.py; with
`quantize_base: nf4`, over a 4-bit base on the GPU): model.safetensors is then the base with
the adapters merged in, and the adapter itself is a PEFT folder `adapter/`
(`adapter_model.safetensors`, `adapter_config.json`); checkpoints keep the adapters, not the base.

Checkpoints are written to `job.work`, which outlives a killed build, and a new attempt
resumes from the newest one: on CPU, the resumed run ends with the same bytes as an
uninterrupted one (the data is a pure function of seed and step; the weights, the optimizer's
whole state and the loop's, RNG included, are restored exactly, or the resume is refused).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

from compiler.inputs import INIT, TOKENIZER, Role, of_role, teacher
from targets import TOKENIZER_JSON, BuildError, Job, link_or_copy, load_tokenizer, lora, losses, tracking
from targets import optim
from targets.trainloop import (FULL, IGNORE, LoopState, Progress, StoredOutputs, StoredTeacher, TokenData,
                               build_model, check_optimizer_fits, checkpoints, clear_partial, device_for,
                               inputs_and_labels, load_checkpoint, lr_at, prune, read_checkpoint, read_metrics,
                               save_checkpoint, scheduled, segment_at, segments, truncate_metrics, weights,
                               write_checkpoint)

OUTPUTS = ("model.safetensors", "config.json", "metrics.jsonl", "checkpoints/*", f"{tracking.TENSORBOARD}/*")


def outputs(spec) -> tuple[str, ...]:
    """OUTPUTS, and for a LoRA step the adapter's folder beside the merged model."""
    return OUTPUTS + (lora.OUTPUTS if spec.lora is not None else ())


def build(job: Job) -> dict:
    if job.spec.distributed is not None:  # in processes of torchrun's, each a Trainer with its Parallel
        from targets import distributed

        return distributed.launch(job)
    trainer = Trainer(job)
    trainer.resume()
    trainer.run()
    return trainer.finish()


class Trainer:
    """The state of one train step: model, optimizer, data, teachers and the loop's counters.
    With a `Parallel` (targets/distributed.py), this process's part of a step trained in several."""

    def __init__(self, job: Job, parallel=None):
        import torch

        if job.work is None:
            raise RuntimeError(f"{job.task}: a train step needs a work directory for its checkpoints")
        self.job, self.spec, self.parallel = job, job.spec, parallel
        self.main = parallel is None or parallel.main  # writes metrics, checkpoints and outputs
        spec = self.spec
        self.model_spec = job.models["model"]
        self.device = device_for(spec.device) if parallel is None else parallel.device()
        if spec.quantize_base is not None:  # before any data is read or model loaded
            lora.require_qlora(self.device)
        self.data = TokenData(job.inputs, self.model_spec.vocab_size)
        self.total = spec.total_steps() or epoch_steps(spec, len(self.data.train[spec.data]))
        if spec.dtype == "bfloat16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise BuildError("dtype bfloat16 needs a GPU that supports it; this one does not: use float32")
        self.stages = segments(spec.stages, self.total, "stage")
        self.phases = segments(spec.distill.phases if spec.distill else (), self.total, "phase")
        self.mixes = [dict(s.datasets) for s in spec.stages] or [{spec.data: 1.0}]
        self.lengths = [s.seq_len or spec.seq_len for s in spec.stages] or [spec.seq_len]
        for n, (mix, length) in enumerate(zip(self.mixes, self.lengths)):
            self.data.check(mix, length, "train", f"stage '{self.stages[n].name}'" if spec.stages else "training")
        self.data.check(self.mixes[0], self.lengths[0], "validation", "the validation loss")
        self.sft = spec.objective == "sft"
        if self.sft:
            self._check_masks()
        self.val_batches = [tuple(torch.from_numpy(t) for t in inputs_and_labels(*([b] if not self.sft else b)))
                            for b in self.data.validation_batches(self.mixes[0], spec.eval.batches,
                                                                  spec.batch_size, self.lengths[0], self.sft)]
        if self.sft and not any(bool((y != IGNORE).any()) for _, y in self.val_batches):
            raise BuildError("the validation windows hold no response tokens, so the validation loss of sft "
                             "is undefined: raise eval.batches or the dataset's split.validation")
        torch.manual_seed(spec.seed)
        self.model, self.config = self._model()
        if parallel is not None:
            self.model = parallel.wrap(self.model)
        if spec.compile:  # in place: the module keeps its parameter names (checkpoints, state dicts)
            (self.model if parallel is None else parallel.plain(self.model)).compile()
        self.trained = lora.ADAPTERS if spec.lora is not None else FULL  # what checkpoints keep of the model
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = optim.make(self.model, spec.optimizer, job.root)
        self.teachers: dict[str, object] = {}  # name -> a live model, or a StoredTeacher
        self.stored: dict[str, dict[tuple[str, int], Path]] = {}  # teacher -> (dataset, seq_len) -> entry
        for name, folder in of_role(job.inputs, Role.TEACHER_OUTPUTS).items():
            who, dataset, length = name.split("~")
            self.stored.setdefault(who, {})[(dataset, int(length))] = folder
        self.ckpt_root = Path(job.work) / "checkpoints"
        self.metrics_path = Path(job.work) / "metrics.jsonl"
        self.state = LoopState(total_steps=self.total)
        self.resumed_from = None
        self.progress = None
        self.inspect_gradients = None  # called with the step index once its gradients are final (tests read them)
        self.empty_steps: list[int] = []  # sft steps of this run whose windows held no response token

    def _model(self):
        """The model to train, and the config.json of the one the step writes: the built model;
        for LoRA, inside adapters; for QLoRA, the `init` weights loaded 4-bit on the GPU inside
        adapters (its config.json comes with the merge at the end)."""
        from targets import architectures

        spec = self.spec
        if spec.quantize_base is not None:
            model, config = lora.quantized_base(self.job.inputs[INIT], self.device), None
        else:
            model, config = build_model(self.job, self.device)
        # a plug-in architecture (targets/architectures.py): called as its interface says, its aux
        # loss joins the loss and its metrics the step's row
        self.plugin = architectures.what_of(config) if architectures.is_plugin(config) else None
        self.aux = architectures.AuxMeter(self.plugin) if self.plugin else None
        return (model if spec.lora is None else lora.wrap(model, spec.lora, spec.seed)), config

    # ------------------------------------------------------------ resume and loop

    def resume(self) -> None:
        if self.main:
            clear_partial(self.ckpt_root)
        found = checkpoints(self.ckpt_root) if self.main else []
        if self.parallel is not None:  # rank 0's checkpoints decide
            found = [Path(p) for p in self.parallel.broadcast([str(p) for p in found[-1:]])]
        if not found:
            if self.main:
                self.metrics_path.unlink(missing_ok=True)
            return
        if self.parallel is None:
            load_checkpoint(found[-1], self.model, self.optimizer, self.state, self.trained)
        else:
            self._load_parallel(found[-1])
        self.resumed_from = self.state.step
        if self.main:
            truncate_metrics(self.metrics_path, self.state.step)
        self.job.log(f"resuming from checkpoint {self._rel(found[-1])} (step {self.state.step} of {self.total})")

    def _load_parallel(self, path: Path) -> None:
        """Checkpoint `path`, read by rank 0, into every process's part of the model and optimizer."""
        parallel, plain = self.parallel, self.parallel.plain(self.model)
        expected = parallel.optimizer_state(self.model, self.optimizer)  # the names and groups a fit needs
        model_state, optimizer_state, loop = {}, {}, None
        if parallel.main:
            tensors, optimizer_state, loop = read_checkpoint(path, self.trained.file)
            source = f"checkpoint {path}"
            check_optimizer_fits(optimizer_state, expected, f"{source}: optimizer.safetensors")
            model_state = self.trained.to_state(plain, tensors)
            unknown = sorted(set(model_state) - set(plain.state_dict()))
            if unknown:
                raise BuildError(f"{source} does not fit the model: unexpected {unknown}")
        parallel.load_state(self.model, self.optimizer, model_state, optimizer_state)
        self.state.load_state_dict(parallel.broadcast(loop), f"checkpoint {path}: state.json")

    def run(self) -> None:
        spec, state = self.spec, self.state
        n = sum(p.numel() for p in self.model.parameters())
        trainable = "" if spec.lora is None else (f" ({sum(p.numel() for p in self.params):,} of them in LoRA "
                                                  f"adapters of rank {spec.lora.r}, the only ones trained)")
        self.job.log(f"{n:,} parameters{trainable} on {self.device.type} ({spec.dtype}): {self.total:,} steps of "
                     f"{spec.batch_size}×{spec.grad_accum} sequences, {spec.objective}")
        tracker = tracking.start(self.job, self.resumed_from) if self.main else tracking.Trackers([])
        first = state.step
        self.t_start = time.perf_counter()
        progress = self.progress = Progress(self.total, state.step) if self.main else None
        with tracker, open(self.metrics_path, "a", encoding="utf-8") if self.main else contextlib.nullcontext() as log:
            for i in range(state.step, self.total):
                if state.stopped_early:
                    break
                row = self.step(i)
                step = i + 1
                row["val_loss"] = self.evaluate() if step % spec.eval.every == 0 or step == self.total else None
                row["wall_time"] = round(self.elapsed(), 4)
                if log is not None:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    tracker.log(row)
                    progress.update(step, row["loss"], row["lr"], row["tokens_per_s"])
                state.step, state.val_loss = step, row["val_loss"]
                state.tokens_seen += row["tokens"]
                if step % spec.checkpoints.every == 0 or step == self.total or state.stopped_early:
                    tracker.flush()  # what the checkpoint has seen is on disk first: a kill loses none of it
                    self.checkpoint()
        if progress is not None:
            progress.close()
        self._empty_steps(first)

    def _empty_steps(self, first: int) -> None:
        """Say so when sft steps saw no response token (their windows fell inside prompts, so they
        changed nothing); fail when no step of a run from the start saw one: the model learned nothing."""
        if not self.empty_steps:
            return
        ran = self.state.step - first
        fix = (f"raise seq_len (now {self.spec.seq_len}) so that windows reach past the prompts, or batch_size, "
               "or shorten the prompts")
        if len(self.empty_steps) == ran and first == 0:
            raise BuildError(f"none of the {ran} optimizer steps saw a response token: every window of "
                             f"{self.spec.seq_len} tokens fell inside prompts, so sft learned nothing; {fix}")
        shown = ", ".join(map(str, self.empty_steps[:5])) + (", ..." if len(self.empty_steps) > 5 else "")
        self.job.log(f"{len(self.empty_steps)} of the {ran} optimizer steps (step {shown}) saw no response token and "
                     f"changed nothing; {fix}")

    def step(self, i: int) -> dict:
        """One optimizer step (step index `i`, 0-based): grad_accum micro-batches, Grokfast's filter,
        clip, the optimizer, QK-clip."""
        import torch

        spec, parallel = self.spec, self.parallel
        stage, phase = segment_at(self.stages, i), segment_at(self.phases, i)
        teachers, weights_ = self.teachers_for(phase)
        lr = lr_at(spec, i, self.total)  # optimizer.lr's, as the metrics log it
        for group in self.optimizer.param_groups:  # each group's own peak (Muon's matrices have theirs)
            group["lr"] = scheduled(group["initial_lr"], spec.schedule, i, self.total)
        t0 = time.perf_counter()
        length, mix = self.lengths[stage], self.mixes[stage]
        # whole stored windows while a stored teacher teaches; random offsets otherwise
        stored = any(isinstance(t, StoredTeacher) for _, t in teachers)
        share = parallel.share(spec.batch_size) if parallel is not None else None
        batches = [self.batch(i, micro, mix, length, stored, share) for micro in range(spec.grad_accum)]
        # the mean over what is counted in the whole optimizer step: every token, or for sft
        # every response token (a micro-batch of prompts only weighs nothing, and is no NaN)
        scale = sum(int((y != IGNORE).sum()) for _, y, _ in batches) if self.sft else spec.grad_accum
        world = 1 if parallel is None else parallel.world
        if parallel is not None and self.sft:  # the response tokens of every process's share
            scale = int(parallel.total(torch.tensor([scale], dtype=torch.int64, device=self.device)))
        # the processes' gradients are averaged: an sft share's sum counts `world` times over the global count
        factor = world if self.sft else 1
        sums = torch.zeros(3 + len(teachers), device=self.device)
        for micro, (x, y, picks) in enumerate(batches if scale else ()):
            with parallel.sync(self.model, micro == len(batches) - 1) if parallel else contextlib.nullcontext():
                loss, ce, kd, parts = self.objective(x.to(self.device, non_blocking=True),
                                                     y.to(self.device, non_blocking=True), teachers, weights_, picks)
                (loss * factor / scale).backward()
            kd = kd if kd is not None else ce.new_zeros(())
            sums += torch.cat([torch.stack([loss, ce, kd]), parts if parts is not None else ce.new_zeros(0)]).detach()
        self.optimizer.filter_gradients()  # Grokfast, when the spec asks for it: on the accumulated gradients
        if spec.clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, spec.clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if parallel is not None:  # the losses of every share: sums of response tokens, or of `world` equal means
            sums = parallel.total(sums) / (1 if self.sft else world)
        loss_v, ce_v, kd_v, *per_teacher = (sums / max(scale, 1)).tolist()
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP's is a DTensor
        if self.inspect_gradients is not None:
            self.inspect_gradients(i)
        self.guard(i + 1, loss_v, grad_norm)
        if not scale:
            self.empty_steps.append(i + 1)
        if scale:  # no response token in the whole step: nothing to learn, the weights stay
            self.optimizer.step()
            self.optimizer.clip_qk()  # QK-clip, when the spec asks for it: by this step's largest logits
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        tokens = spec.batch_size * spec.grad_accum * length  # the global batch's
        return {"step": i + 1, "phase": self.phases[phase].name, "stage": self.stages[stage].name,
                "loss": loss_v, "ce": ce_v, "kd": kd_v if teachers else None,
                "kd_teachers": dict(zip((n for n, _ in teachers), per_teacher)) if teachers else None,
                "lr": lr, "grad_norm": grad_norm,
                "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
                **(self.aux.row(parallel) if self.aux is not None else {})}

    def batch(self, i: int, micro: int, mix: dict[str, float], length: int, stored: bool = False,
              share: tuple[int, int] | None = None):
        """(inputs, labels, picks) of micro-batch `micro` of step index `i`, as CPU tensors; with
        `stored`, whole windows of the stored teacher outputs, and `picks` says which (else None);
        with `share`, this process's rows of it only."""
        import torch

        spec = self.spec
        picks = None
        if stored:
            drawn, picks = self.data.window_batch(spec.seed, i, micro, mix, spec.batch_size, length,
                                                  spec.distill.windows, share)
        else:
            drawn = self.data.train_batch(spec.seed, i, micro, mix, spec.batch_size, length, self.sft, share)
        x, y = (torch.from_numpy(t) for t in inputs_and_labels(*(drawn if self.sft else [drawn])))
        return x, y, picks

    def _check_masks(self) -> None:
        for mix in self.mixes:
            for name in mix:
                if name not in self.data.masks["train"]:
                    raise BuildError(f"objective sft needs response masks, and dataset '{name}' was tokenized "
                                     f"without one: give it instruction/response records")

    def objective(self, x, y, teachers: list, weights_: list[float], picks=None):
        """(loss, ce, kd, per_teacher) of one micro-batch; kd and per_teacher (each teacher's term
        of kd) are None when nothing is distilled. For sft the loss is summed over the response
        tokens (the caller divides by the step's count). A stored teacher's targets are those of
        the windows `picks` names; a live one runs on `x`."""
        import torch

        with self.autocast():
            logits, aux = self._forward(x)
            if self.sft:  # a plug-in's aux loss weighs as much per response token as in the mean
                loss, count = losses.lm_loss_sum(logits, y)
                return (loss if aux is None else loss + aux * count), loss, None, None
            if not teachers:
                loss = losses.lm_loss(logits, y)
                return (loss if aux is None else loss + aux), loss, None, None
            with torch.no_grad():
                taught = [self._stored_targets(t, picks, x, y) if isinstance(t, StoredTeacher)
                          else self._live(t, x) for _, t in teachers]
        d = self.spec.distill
        loss, ce, kd, parts = losses.distill_loss(logits, taught, weights_, y, d.temperature, d.alpha)
        return (loss if aux is None else loss + aux), ce, kd, parts

    def _forward(self, x):
        """The model's logits on `x`, and a plug-in's aux loss (None otherwise); its metrics are noted
        for the step's row."""
        if self.plugin is None:
            return self.model(input_ids=x, use_cache=False).logits, None
        from targets import architectures

        out = architectures.forward(self.model, x, self.plugin, self.model_spec.vocab_size)
        self.aux.add(out)
        return out.logits, out.aux_loss

    def _logits(self, x):
        """The model's logits on `x` (validation: nothing noted)."""
        if self.plugin is None:
            return self.model(input_ids=x, use_cache=False).logits
        from targets import architectures

        return architectures.forward(self.model, x, self.plugin, self.model_spec.vocab_size).logits

    def _live(self, model, x):
        self.state.teacher_forwards += 1
        return model(input_ids=x, use_cache=False).logits

    def _stored_targets(self, teacher: StoredTeacher, picks: list, x, y):
        """A stored teacher's targets at the windows of `picks` (inputs `x`, labels `y`)."""
        import torch

        found = teacher.targets(picks, x.shape[0], x.shape[1])
        to = {k: torch.from_numpy(found[k]).to(self.device, non_blocking=True) if found[k] is not None else None
              for k in ("logprobs", "ids", "rest")}
        if teacher.align == "same":
            return losses.TopK(to["logprobs"], to["ids"], to["rest"])
        return losses.Groups(teacher.align, torch.cat([x, y[:, -1:]], dim=1), found["spans"], to["logprobs"],
                             to["ids"], to["rest"], found["mapping"])

    def autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.spec.dtype == "bfloat16")

    def guard(self, step: int, loss: float, grad_norm: float) -> None:
        """Stop before a non-finite loss or gradient reaches the weights; the checkpoints stay."""
        what = "loss" if not math.isfinite(loss) else "gradient norm" if not math.isfinite(grad_norm) else None
        if what is None:
            return
        value = loss if what == "loss" else grad_norm
        found = checkpoints(self.ckpt_root)
        last = (f"the last good checkpoint, kept, is {self._rel(found[-1])}" if found else
                f"there is no checkpoint yet (the first is written at step {self.spec.checkpoints.every})")
        raise BuildError(f"the {what} is {value} at optimizer step {step} of {self.total}; training stopped "
                         f"before applying it, and {last}. Lower optimizer.lr, add warmup or set clip, then "
                         f"build again")

    def evaluate(self) -> float:
        """Mean cross-entropy on the fixed validation batches (the student's own language-model
        loss, for distillation too); updates the best value and early stopping."""
        import torch

        self.model.eval()
        with torch.no_grad(), self.autocast():
            loss = losses.lm_loss_sum if self.sft else losses.lm_loss
            values = [loss(self._logits(x.to(self.device)), y.to(self.device)) for x, y in self.val_batches]
        if self.sft:  # the mean over every response token of the validation batches
            val = float(sum(s for s, _ in values)) / sum(n for _, n in values)
        else:
            val = float(torch.stack(values).mean())
        self.model.train()
        state, rule = self.state, self.spec.early_stopping
        if state.best_val_loss is None or val < state.best_val_loss:
            state.best_val_loss = val
        if rule is not None:
            es = state.early_stopping
            if es.best is None or val < es.best - rule.min_delta:
                es.best, es.bad_evals = val, 0
            else:
                es.bad_evals += 1
                state.stopped_early = es.bad_evals >= rule.patience
        return val

    def elapsed(self) -> float:
        """Seconds of training behind the current weights: those of earlier attempts up to the
        checkpoint resumed from, plus this attempt's."""
        return self.state.elapsed_s + time.perf_counter() - self.t_start

    def checkpoint(self) -> None:
        # no data cursor or schedule position to save: windows are drawn by default_rng([seed, 0,
        # step index, micro-batch]) and the learning rate is a function of the step index
        loop = replace(self.state, elapsed_s=self.elapsed())
        if self.parallel is None:
            save_checkpoint(self.ckpt_root, self.model, self.optimizer, loop, self.trained)
        else:  # the whole state, gathered to rank 0, which writes it
            parallel = self.parallel
            model_state = parallel.model_state(self.model)
            optimizer_state = parallel.optimizer_state(self.model, self.optimizer)
            if not self.main:
                return
            write_checkpoint(self.ckpt_root, self.trained.file,
                             self.trained.of_state(parallel.plain(self.model), model_state), optimizer_state, loop)
        prune(self.ckpt_root, self.spec.checkpoints.keep)

    # ------------------------------------------------------------ teachers

    def teachers_for(self, phase: int) -> tuple[list, list[float]]:
        """The current phase's teachers as (name, teacher), loaded now if the phase just began,
        and their weights."""
        if self.spec.distill is None:
            return [], []
        wanted = self.spec.distill.phases[phase].teachers
        if set(self.teachers) != set(wanted):
            for name in [n for n in self.teachers if n not in wanted]:
                del self.teachers[name]
            gc.collect()
            for name in wanted:
                if name not in self.teachers:
                    self.teachers[name] = self.stored_teacher(name) if name in self.stored else self.load_teacher(name)
        return [(n, self.teachers[n]) for n in wanted], list(wanted.values())

    def stored_teacher(self, name: str) -> StoredTeacher:
        """A step teacher through its teacher-outputs entries: nothing of the teacher is loaded."""
        d = self.spec.distill
        outputs = {key: StoredOutputs(folder, f"teacher '{name}' on dataset '{key[0]}'", key[1], d.temperature,
                                      self.model_spec.vocab_size)
                   for key, folder in sorted(self.stored[name].items())}
        if self.progress is not None:
            self.progress.close()  # end the progress line before other output
        teacher = StoredTeacher(outputs)
        windows = sum(o.windows for o in outputs.values())
        kept = "the whole distribution" if d.top_k == "all" else f"top-{d.top_k}"
        aligned = "" if teacher.align == "same" else f", align {teacher.align}"
        self.job.log(f"teacher '{name}': stored outputs of step '{d.teachers[name].step}' ({kept}{aligned}, "
                     f"{windows:,} windows)")
        return teacher

    def teacher_summary(self) -> dict[str, dict]:
        """Per teacher, how it met the student's tokens (`entries.TeacherSummary`): from its
        stored entries' teacher.json, coverage weighted by the tokens each covers."""
        if self.spec.distill is None:
            return {}
        out = {}
        for name in self.spec.distill.teachers:
            infos = [json.loads((f / "teacher.json").read_text()) for f in self.stored.get(name, {}).values()]
            if not infos:
                out[name] = {"align": "same", "stored": False, "top_k": None, "windows": None, "coverage": 1.0,
                             "mapped": None}
                continue
            tokens = [i["windows"] * i["seq_len"] for i in infos]
            out[name] = {"align": infos[0]["align"], "stored": True, "top_k": infos[0]["top_k"],
                         "windows": sum(i["windows"] for i in infos),
                         "coverage": round(sum(i["coverage"] * t for i, t in zip(infos, tokens)) / sum(tokens), 6),
                         "mapped": infos[0].get("mapped")}
        return out

    def load_teacher(self, name: str):
        """A frozen teacher in eval mode: a step's entry, a local folder, or a hub model."""
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        from targets.architectures import causal_lm  # a step's entry or a folder may be a plug-in's

        source = self.spec.distill.teachers[name]
        dtype = torch.bfloat16 if self.spec.dtype == "bfloat16" else torch.float32
        if self.progress is not None:
            self.progress.close()  # end the progress line before other output
        bar = hf_logging.is_progress_bar_enabled()
        try:
            if teacher(name) in self.job.inputs:
                what = f"step '{source.step}'"
                hf_logging.disable_progress_bar()  # a local load is instant: no bar
                model = causal_lm(self.job.root, self.job.inputs[teacher(name)], dtype, f"teacher '{name}' ({what})")
            elif source.path is not None:
                what = f"folder '{source.path}'"
                same_tokenizer(self.job, self.job.root / source.path, name, what)
                hf_logging.disable_progress_bar()
                model = causal_lm(self.job.root, self.job.root / source.path, dtype, f"teacher '{name}' ({what})")
            else:
                what = f"hub model '{source.hub}'"
                model = AutoModelForCausalLM.from_pretrained(source.hub, dtype=dtype, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise BuildError(f"teacher '{name}' ({what}) could not be loaded: {exc}") from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        if model.config.vocab_size != self.model_spec.vocab_size:
            raise BuildError(f"teacher '{name}' ({what}) has a vocabulary of {model.config.vocab_size:,} tokens, "
                             f"the student {self.model_spec.vocab_size:,}: distill from a teacher that shares "
                             f"the student's tokenizer")
        self.job.log(f"teacher '{name}' loaded: {what}, {model.num_parameters():,} parameters")
        return model.to(self.device).eval().requires_grad_(False)

    # ------------------------------------------------------------ outputs

    def finish(self) -> dict | None:
        """Write the outputs and return the metrics (rank 0 of several processes: None elsewhere)."""
        from safetensors.torch import save_file

        if self.parallel is not None:
            self.model = self._gathered()
            if self.model is None:
                return None
        out = self.job.out
        model, config = self.final_model()
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(weights(model), str(out / "model.safetensors"), metadata={"format": "pt"})
        shutil.copymode(out / "config.json", out / "model.safetensors")  # safetensors writes 0600
        shutil.copyfile(self.metrics_path, out / "metrics.jsonl")
        tracking.write_entry(self.job, out)  # tensorboard/<task>/: every row of metrics.jsonl
        kept = checkpoints(self.ckpt_root)
        for ckpt in kept:
            _link_tree(ckpt, out / "checkpoints" / ckpt.name)
        rows = read_metrics(self.metrics_path)
        s = self.state
        vals = [r["val_loss"] for r in rows if r["val_loss"] is not None]
        return {
            "parameters": sum(p.numel() for p in model.parameters()),
            "steps": s.step, "total_steps": self.total, "stopped_early": s.stopped_early,
            "final_loss": rows[-1]["loss"] if rows else None, "final_val_loss": vals[-1] if vals else None,
            "best_val_loss": s.best_val_loss, "tokens_seen": s.tokens_seen,
            "seconds": round(self.elapsed(), 3),
            "resumed_from": self.resumed_from, "device": self.device.type, "dtype": self.spec.dtype,
            "phases": _summary(rows, "phase"), "stages": _summary(rows, "stage"),
            "checkpoints": [c.name for c in kept], "teacher_forwards": s.teacher_forwards,
            "teachers": self.teacher_summary(),
        }

    def _gathered(self):
        """The trained model whole on rank 0's CPU (None elsewhere): the full state gathered from
        every process into a plain model built as a one-process step builds it."""
        import torch

        state = self.parallel.model_state(self.model)
        if not self.main:
            return None
        model, _ = build_model(self.job, torch.device("cpu"))
        if self.spec.lora is not None:
            model = lora.wrap(model, self.spec.lora, self.spec.seed)
        missing, unexpected = model.load_state_dict(state, strict=False)
        from targets.trainloop import dropped

        tied = dropped(model)  # a tied head, or a plug-in's tensor under a second name
        if set(missing) - tied or unexpected:
            raise BuildError(f"the state gathered from the {self.parallel.world} processes does not fit the model: "
                             f"missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
        return model

    def final_model(self):
        """The model the step writes whole, and its config.json: the trained one; for LoRA, the
        base with the adapters merged in (the adapter's folder is written first); for
        QLoRA, the unquantized base, built again on the CPU, with them: merged into the 4-bit base
        they would keep its rounding."""
        if self.spec.lora is None:
            return self.model, self.config
        lora.save_adapter(self.model, self.job.out)
        if self.spec.quantize_base is None:
            return lora.merged(self.model), self.config
        import torch

        base, config = build_model(self.job, torch.device("cpu"))
        state = {k: v.cpu() for k, v in lora.adapter_weights(self.model).items()}
        return lora.merged(lora.attach(base, self.spec.lora, state, "the trained adapters")), config

    def _rel(self, path: Path) -> str:
        try:
            return str(Path(path).resolve().relative_to(Path(self.job.root).resolve()))
        except ValueError:
            return str(path)


def _link_tree(src: Path, dst: Path) -> None:
    """A checkpoint's files hard-linked into the output (no copy of the bytes); the work copy
    stays until the entry is committed, so a kill here still resumes."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        link_or_copy(f, dst / f.name)


def _summary(rows: list[dict], field: str) -> list[dict]:
    """Per phase or stage, in order (a list: the manifest sorts keys): its name, first and last
    step, and the loss and its parts at both (the distillation term also per teacher)."""
    out: dict[str, dict] = {}
    for r in rows:
        if r[field] is None:
            continue
        entry = out.setdefault(r[field], {"name": r[field], "first_step": r["step"], "loss_start": r["loss"],
                                          "ce_start": r["ce"], "kd_start": r["kd"],
                                          "kd_teachers_start": r["kd_teachers"]})
        entry.update(last_step=r["step"], loss_end=r["loss"], ce_end=r["ce"], kd_end=r["kd"],
                     kd_teachers_end=r["kd_teachers"])
    return list(out.values())


def epoch_steps(spec, train_tokens: int) -> int:
    """Optimizer steps of `epochs` passes over the `train_tokens` of the step's one dataset."""
    per_step = spec.batch_size * spec.grad_accum * spec.seq_len
    return max(1, math.ceil(spec.epochs * train_tokens / per_step))


def same_tokenizer(job: Job, folder: Path, name: str, what: str) -> None:
    """A teacher folder's tokenizer must map tokens to the same ids as the student's: equal
    vocabulary sizes (checked at compile time) are not enough. A folder without a
    tokenizer.json cannot be checked, and says so."""
    if not (folder / TOKENIZER_JSON).is_file():
        job.log(f"teacher '{name}' ({what}) has no tokenizer.json: only its vocabulary size could be checked")
        return
    theirs = load_tokenizer(folder).get_vocab()
    ours = load_tokenizer(job.inputs[TOKENIZER]).get_vocab()
    if theirs != ours:
        differ = sum(1 for t, i in ours.items() if theirs.get(t) != i)
        raise BuildError(f"teacher '{name}' ({what}) has another tokenizer than the student: {len(theirs):,} tokens "
                         f"against the student's {len(ours):,}, {differ:,} of the student's tokens with another id "
                         f"or missing; distill from a teacher trained with the student's tokenizer")
