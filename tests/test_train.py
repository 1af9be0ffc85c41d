"""Train builder: pretraining, distillation, curriculum, checkpoints, exact resume and the NaN guard.

Most builds run in this interpreter through the runner doit calls (transformers loads once);
the kill-and-resume test runs the real `doit` and kills it with SIGKILL.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import runner
from compiler import graph, params, project, store
from compiler.errors import SpecError
from compiler.inputs import TOKENIZER, tokens
from conftest import REPO, TINY_SPECS, build_pipeline as build, Project, add_qa, code_project, kill_at_first_checkpoint, tiny_corpus
from targets import losses, trainloop

WIDE = """
    kind: model
    name: wide
    hidden_size: 48
    intermediate_size: 96
    layers: 1
    heads: 4
    kv_heads: 1
    vocab_size: 512
    max_positions: 128
"""
TIED = """
    kind: model
    name: tied
    hidden_size: 32
    intermediate_size: 64
    layers: 1
    heads: 2
    vocab_size: 400
    max_positions: 64
    tie_embeddings: true
"""
CODE_DATA = """
    kind: dataset
    name: code
    sources:
      - type: files
        glob: extra/*.jsonl
    split:
      validation: 0.1
"""
# the pretraining run most tests look at; it also teaches and starts other steps
PRE = {"kind": "train", "model": "tiny", "tokenizer": "tok", "data": "docs", "max_steps": 30, "batch_size": 4,
       "seq_len": 32, "optimizer": {"lr": 0.003}, "schedule": {"warmup_steps": 3},
       "eval": {"every": 5, "batches": 2}, "checkpoints": {"every": 5, "keep": 2}}
ROW_KEYS = ["step", "phase", "stage", "loss", "ce", "kd", "kd_teachers", "lr", "grad_norm", "tokens", "tokens_per_s",
            "val_loss", "wall_time"]


def new_project(root: Path) -> Project:
    """conftest's tiny project (docs -> tok -> init), a second dataset, a wider teacher model,
    and the `pre` pretraining step."""
    p = code_project(root)
    texts = tiny_corpus(600)
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts[:300]))
    p.write("extra/code.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts[300:]))
    for rel, text in TINY_SPECS.items():
        p.write(rel, text)
    p.write("specs/datasets/code.yaml", CODE_DATA)
    p.write("specs/models/wide.yaml", WIDE)
    p.write("specs/models/tied.yaml", TIED)
    add_qa(p)
    steps = yaml.safe_load(p.read("specs/pipelines/main.yaml"))
    steps["steps"].update(wideinit={"kind": "init", "model": "wide", "tokenizer": "tok", "seed": 1}, pre=PRE)
    p.write("specs/pipelines/main.yaml", yaml.safe_dump(steps, sort_keys=False))
    return p


def key_of(p: Project, task: str) -> str | None:
    return graph.compile_graph(project.load(p.root)).key(task)


def rows(entry: Path) -> list[dict]:
    return [json.loads(line) for line in (entry / "metrics.jsonl").read_text().splitlines()]


def manifest(entry: Path) -> dict:
    return json.loads((entry / "manifest.json").read_text())


def load(path: Path):
    from transformers import LlamaForCausalLM

    model, info = LlamaForCausalLM.from_pretrained(path, output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    return model


def with_(base: dict, **changes) -> dict:
    out = json.loads(json.dumps(base))
    out.update(changes)
    return out


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    p = new_project(tmp_path_factory.mktemp("train") / "proj")
    g = graph.compile_graph(project.load(p.root))
    for task in g.plans:
        assert runner.run(g, task) is None, task
    return p


@pytest.fixture(scope="module")
def pre(proj) -> Path:
    return proj.root / "build" / "main" / "pre"


# ---------------------------------------------------------------- the loss, the schedule, the data

def test_distill_loss_matches_a_direct_computation():
    import torch

    rng = np.random.default_rng(0)
    student, t1, t2 = (rng.normal(0, 3, (2, 5, 11)) for _ in range(3))
    labels = rng.integers(0, 11, (2, 5))
    T, alpha, w = 2.0, 0.3, (1.5, 1.0)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    ce = -np.mean([log_softmax(student)[b, t, labels[b, t]] for b in range(2) for t in range(5)])
    kd = 0.0
    for weight, teacher in zip(w, (t1, t2)):
        p, log_q = np.exp(log_softmax(teacher / T)), log_softmax(student / T)
        kl_per_token = (p * (np.log(p) - log_q)).sum(-1)  # KL(teacher ‖ student) at each position
        kd += weight * kl_per_token.mean() * T**2
    tensor = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    loss, got_ce, got_kd, per_teacher = losses.distill_loss(tensor(student), [tensor(t1), tensor(t2)], list(w),
                                                            torch.tensor(labels), T, alpha)
    assert got_ce.item() == pytest.approx(ce, rel=1e-5)
    assert got_kd.item() == pytest.approx(kd, rel=1e-5)
    assert per_teacher.shape == (2,) and per_teacher.sum().item() == pytest.approx(kd, rel=1e-6)
    assert loss.item() == pytest.approx(alpha * kd + (1 - alpha) * ce, rel=1e-5)
    assert losses.lm_loss(tensor(student), torch.tensor(labels)).item() == pytest.approx(ce, rel=1e-5)


def test_distill_loss_limits():
    import torch

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, 7, generator=g), torch.randn(3, 4, 7, generator=g)
    y = torch.randint(0, 7, (3, 4), generator=g)
    _, _, same, _ = losses.distill_loss(s, [s.clone()], [1.0], y, 2.0, 0.5)
    assert same.item() == pytest.approx(0.0, abs=1e-6)  # a student that equals its teacher has nothing to learn
    loss0, ce, _, _ = losses.distill_loss(s, [t], [1.0], y, 2.0, 0.0)
    loss1, _, kd, _ = losses.distill_loss(s, [t], [1.0], y, 2.0, 1.0)
    assert (loss0.item(), loss1.item()) == (ce.item(), kd.item())
    _, _, kd_t1, _ = losses.distill_loss(s, [t], [1.0], y, 1.0, 0.5)
    _, _, kd_w, per_teacher = losses.distill_loss(s, [t, t], [0.5, 2.0], y, 1.0, 0.5)
    assert kd_w.item() == pytest.approx(2.5 * kd_t1.item(), rel=1e-6)
    assert per_teacher.tolist() == pytest.approx([0.5 * kd_t1.item(), 2.0 * kd_t1.item()], rel=1e-6)


def test_learning_rate_schedule():
    from compiler.specs import TrainStep

    spec = TrainStep.model_validate(dict(PRE, optimizer={"lr": 1.0}, schedule={"warmup_steps": 4, "min_lr_ratio": 0.1}))
    lrs = [trainloop.lr_at(spec, i, 20) for i in range(20)]
    assert lrs[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert lrs[-1] == pytest.approx(0.1)
    assert lrs[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 8 / 15)))
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    constant = spec.model_copy(update={"schedule": spec.schedule.model_copy(update={"kind": "constant"})})
    assert [trainloop.lr_at(constant, i, 20) for i in (0, 3, 4, 19)] == [0.2, 0.8, 1.0, 1.0]


def tokens_folder(folder: Path, streams: dict[str, np.ndarray], vocab: int = 60_000) -> Path:
    """A tokens entry as the tokens builder writes it."""
    folder.mkdir(parents=True)
    for split, ids in streams.items():
        ids.astype(np.uint16).tofile(folder / f"{split}.bin")
    splits = {s: {"documents": 1, "tokens": len(ids)} for s, ids in streams.items()}
    (folder / "tokens.json").write_text(json.dumps({"dtype": "uint16", "eos_id": 1, "vocab_size": vocab,
                                                    "splits": splits}))
    return folder


def test_training_windows_are_a_pure_function_of_seed_step_and_micro_batch(tmp_path):
    a = tokens_folder(tmp_path / "a", {"train": np.arange(5000), "validation": np.arange(300)})
    b = tokens_folder(tmp_path / "b", {"train": np.arange(40000, 42000), "validation": np.arange(300)})
    data = trainloop.TokenData({tokens("a"): a, tokens("b"): b, TOKENIZER: tmp_path}, 60_000)
    mix = {"a": 3.0, "b": 1.0}
    batch = data.train_batch(7, 12, 1, mix, 400, 16)
    assert batch.shape == (400, 17) and batch.dtype == np.int64
    assert (np.diff(batch, axis=1) == 1).all()  # every window is a contiguous slice of one stream
    from_b = batch[:, 0] >= 40000
    assert 0.15 < from_b.mean() < 0.35  # weight 1 of 4
    assert batch[~from_b].max() < 5000 and batch[from_b].max() < 42000
    assert np.array_equal(batch, trainloop.TokenData({tokens("a"): a, tokens("b"): b}, 60_000)
                          .train_batch(7, 12, 1, mix, 400, 16))
    others = [data.train_batch(*args, mix, 400, 16) for args in ((8, 12, 1), (7, 13, 1), (7, 12, 0))]
    assert not any(np.array_equal(batch, o) for o in others)


def test_validation_batches_are_fixed_and_spread_over_the_split(tmp_path):
    a = tokens_folder(tmp_path / "a", {"train": np.arange(100), "validation": np.arange(1000)})
    data = trainloop.TokenData({tokens("a"): a}, 60_000)
    batches = data.validation_batches({"a": 1.0}, 3, 4, 9)
    assert [b.shape for b in batches] == [(4, 10)] * 3
    starts = np.concatenate(batches)[:, 0]
    assert starts[0] == 0 and starts[-1] == 1000 - 10 and (np.diff(starts) > 0).all()
    assert all(np.array_equal(x, y) for x, y in zip(batches, data.validation_batches({"a": 1.0}, 3, 4, 9)))


def test_tokens_of_a_bigger_vocabulary_are_refused(tmp_path):
    from targets import BuildError

    a = tokens_folder(tmp_path / "a", {"train": np.arange(100), "validation": np.arange(100)}, vocab=1000)
    with pytest.raises(BuildError) as exc:
        trainloop.TokenData({tokens("a"): a}, 512)
    assert str(exc.value) == ("dataset 'a' was tokenized with a vocabulary of 1,000 tokens, "
                              "more than the model's 512 embedding rows")


def test_a_split_too_short_for_one_window_is_refused(tmp_path):
    from targets import BuildError

    a = tokens_folder(tmp_path / "a", {"train": np.arange(100), "validation": np.arange(20)})
    data = trainloop.TokenData({tokens("a"): a}, 60_000)
    data.check({"a": 1.0}, 99, "train", "training")
    with pytest.raises(BuildError) as exc:
        data.check({"a": 1.0}, 32, "validation", "the validation loss")
    assert str(exc.value) == ("dataset 'a' has 20 validation tokens, fewer than one window of seq_len + 1 = 33 "
                              "tokens, needed for the validation loss: lower seq_len or raise the dataset's "
                              "split.validation")


def test_kept_checkpoints_are_the_last_ones_and_the_best(tmp_path):
    for step, val in ((5, 1.0), (10, 3.0), (15, None), (20, 2.0)):
        (tmp_path / f"step-{step:06d}").mkdir()
        (tmp_path / f"step-{step:06d}" / "state.json").write_text(json.dumps({"step": step, "val_loss": val}))
    (tmp_path / ".tmp-step-000025").mkdir()  # a kill while writing: not a checkpoint
    (tmp_path / "step-000030").mkdir()  # no state.json: not a checkpoint either
    assert [p.name for p in trainloop.checkpoints(tmp_path)] == [f"step-{n:06d}" for n in (5, 10, 15, 20)]
    trainloop.prune(tmp_path, 2)
    trainloop.clear_partial(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000005", "step-000015", "step-000020", "step-000030"]


def test_metrics_log_is_cut_back_to_the_checkpoint_resumed_from(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": n, "loss": 1.0}) + "\n" for n in range(1, 8)) + '{"step": 8, "lo')
    trainloop.truncate_metrics(log, 5)
    assert log.read_text() == "".join(json.dumps({"step": n, "loss": 1.0}) + "\n" for n in range(1, 6))
    log.write_text('{"step": 1, "lo')  # killed while writing the first line
    trainloop.truncate_metrics(log, 0)
    assert log.read_text() == ""


# ---------------------------------------------------------------- a pretraining run


def test_pretrain_writes_exactly_its_outputs(proj, pre):
    vals = {r["step"]: r["val_loss"] for r in rows(pre)}
    best = min((s for s in vals if s % 5 == 0), key=lambda s: vals[s])
    kept = sorted({25, 30, best})
    expected = {"model.safetensors", "config.json", "metrics.jsonl", "manifest.json",
                "tensorboard/main.pre/events.out.tfevents.ingot"}
    expected |= {f"checkpoints/step-{s:06d}/{f}" for s in kept
                 for f in ("model.safetensors", "optimizer.safetensors", "state.json")}
    assert {p.relative_to(pre).as_posix() for p in pre.rglob("*") if p.is_file()} == expected
    assert not (pre / "model.safetensors").read_bytes()[:2] in (b"PK", b"\x80\x04")  # neither zip nor pickle
    assert (pre / "model.safetensors").stat().st_mode == (pre / "config.json").stat().st_mode
    assert not (proj.root / "build" / "store" / ".work" / manifest(pre)["key"]).exists()  # resume state is spent


def test_pretrain_output_loads_and_is_what_was_trained(proj, pre):
    import torch
    from safetensors.torch import load_file

    model = load(pre)
    for name, tensor in load_file(pre / "model.safetensors").items():
        assert torch.equal(model.state_dict()[name], tensor), name
    init_config = json.loads((proj.root / "build" / "main" / "init" / "config.json").read_text())
    assert json.loads((pre / "config.json").read_text()) == init_config  # as the init step writes it
    last = load_file(pre / "checkpoints" / "step-000030" / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in last.items())


def test_pretrain_metrics(proj, pre):
    from compiler.specs import TrainStep

    log = rows(pre)
    assert [list(r) for r in log] == [ROW_KEYS] * 30
    assert [r["step"] for r in log] == list(range(1, 31))
    assert [r["step"] for r in log if r["val_loss"] is not None] == [5, 10, 15, 20, 25, 30]
    assert {(r["phase"], r["stage"], r["kd"], r["kd_teachers"], r["tokens"]) for r in log} == {
        (None, None, None, None, 4 * 32)}
    assert all(r["loss"] == r["ce"] and r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in log)
    spec = TrainStep.model_validate(PRE)
    assert [r["lr"] for r in log] == [trainloop.lr_at(spec, i, 30) for i in range(30)]
    assert np.mean([r["loss"] for r in log[-5:]]) < np.mean([r["loss"] for r in log[:5]]) - 0.5
    assert log[-1]["val_loss"] < log[4]["val_loss"]
    assert all(a["wall_time"] < b["wall_time"] for a, b in zip(log, log[1:]))
    m = manifest(pre)["metrics"]
    model = project.load(proj.root).models["tiny"][0]
    vals = [r["val_loss"] for r in log if r["val_loss"] is not None]
    assert m == {"parameters": params.count(model), "steps": 30, "total_steps": 30, "stopped_early": False,
                 "final_loss": log[-1]["loss"], "final_val_loss": vals[-1], "best_val_loss": min(vals),
                 "tokens_seen": 30 * 4 * 32, "seconds": m["seconds"], "resumed_from": None, "device": "cpu",
                 "dtype": "float32", "phases": [], "stages": [], "checkpoints": m["checkpoints"],
                 "teacher_forwards": 0, "teachers": {}}
    assert 0 < m["seconds"] < log[-1]["wall_time"] + 60
    assert m["checkpoints"] == sorted(p.name for p in (pre / "checkpoints").iterdir())


def test_checkpoint_holds_what_resume_needs(pre):
    """optimizer.safetensors is AdamW's state_dict(): its tensors by parameter index, and the rest
    (param_groups, with the schedule's last lr) as JSON in the header; state.json the loop state."""
    from compiler.specs import TrainStep
    from safetensors import safe_open

    ckpt = pre / "checkpoints" / "step-000030"
    with safe_open(str(ckpt / "optimizer.safetensors"), framework="pt") as f:
        opt, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    assert set(meta) == {"optimizer"}  # one entry: several would be written in hash-map order
    tree = json.loads(meta["optimizer"])
    spec = TrainStep.model_validate(PRE).optimizer
    params = [p for group in trainloop.adamw(load(pre), spec).param_groups for p in group["params"]]
    assert set(opt) == {f"state.{i}.{k}" for i in range(len(params)) for k in ("step", "exp_avg", "exp_avg_sq")}
    assert all(opt[f"state.{i}.step"].item() == 30 and opt[f"state.{i}.exp_avg"].shape == p.shape
               for i, p in enumerate(params))
    assert tree["state"]["0"] == {k: {"tensor": f"state.0.{k}"} for k in ("step", "exp_avg", "exp_avg_sq")}
    decay, other = tree["param_groups"]
    assert decay["params"] + other["params"] == list(range(len(params)))
    assert (decay["weight_decay"], other["weight_decay"]) == (spec.weight_decay, 0.0)
    assert decay["lr"] == other["lr"] == rows(pre)[-1]["lr"] and decay["betas"] == {"tuple": list(spec.betas)}
    state = json.loads((ckpt / "state.json").read_text())
    assert list(state) == ["step", "total_steps", "tokens_seen", "elapsed_s", "val_loss", "best_val_loss",
                           "early_stopping", "stopped_early", "teacher_forwards", "rng"]
    assert (state["step"], state["total_steps"], state["stopped_early"], state["tokens_seen"]) == (30, 30, False, 3840)
    assert state["val_loss"] == rows(pre)[-1]["val_loss"]
    assert list(state["rng"]) == ["torch", "cuda"]


def assert_same_state(a, b, path: str = "state_dict") -> None:
    """Equal to the bit and of the same types all the way down (an int step is no float step)."""
    import torch

    assert type(a) is type(b), f"{path}: {type(a).__name__} against {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.device, a.shape) == (b.dtype, b.device, b.shape) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}.{i}")
    else:
        assert a == b, path


def take_steps(model, optimizer, steps: int = 3) -> None:
    """A few optimizer steps on random windows (a closure, so LBFGS can take them too)."""
    import torch

    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=g)

        def closure():
            optimizer.zero_grad()
            loss = losses.lm_loss(model(input_ids=ids[:, :-1]).logits, ids[:, 1:])
            loss.backward()
            return loss

        optimizer.step(closure)


def adamw_of(model):
    """The optimizer a train step of PRE builds (targets/optim.py: AdamW, each group's `initial_lr` set)."""
    from compiler.specs import TrainStep
    from targets import optim

    return optim.make(model, TrainStep.model_validate(PRE).optimizer, REPO)


# each keeps other state: AdamW's moments in two groups, a max of moments, a momentum, a sum, and
# LBFGS's history (lists of tensors) beside Python ints and floats
OPTIMIZERS = ["adamw", "adam-amsgrad", "sgd-momentum", "adagrad", "lbfgs"]


def optimizer_of(name: str, model):
    import torch

    if name == "adamw":
        return adamw_of(model)
    cls, options = {"adam-amsgrad": (torch.optim.Adam, {"lr": 0.01, "amsgrad": True}),
                    "sgd-momentum": (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
                    "adagrad": (torch.optim.Adagrad, {"lr": 0.01}),
                    "lbfgs": (torch.optim.LBFGS, {"lr": 0.5, "max_iter": 3, "history_size": 2})}[name]
    return cls(model.parameters(), **options)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_checkpoint_round_trips_the_whole_state(pre, tmp_path, name):
    import torch

    model = load(pre)
    optimizer = optimizer_of(name, model)
    take_steps(model, optimizer)
    for group in optimizer.param_groups:
        group["lr"] = 1.2345e-3  # as the schedule sets it, unlike the constructor's
    saved = optimizer.state_dict()
    loop = trainloop.LoopState(step=3, total_steps=9, tokens_seen=48, elapsed_s=1.5, val_loss=None,
                               best_val_loss=4.25, early_stopping=trainloop.EarlyStopping(4.25, 1))
    path = trainloop.save_checkpoint(tmp_path, model, optimizer, loop)
    after_save = torch.rand(4)  # the draws a resume must repeat

    fresh = load(pre)
    again, resumed = optimizer_of(name, fresh), trainloop.LoopState()
    trainloop.load_checkpoint(path, fresh, again, resumed)
    assert_same_state(again.state_dict(), saved)
    assert resumed == loop
    assert torch.equal(torch.rand(4), after_save)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    if name == "lbfgs":  # Python scalars come back with their type
        assert [type(saved["state"][0][k]) for k in ("func_evals", "n_iter", "prev_loss")] == [int, int, float]
    take_steps(model, optimizer)
    take_steps(fresh, again)
    assert_same_state(again.state_dict(), optimizer.state_dict())  # and the next steps are the same


def copied_checkpoint(pre, tmp_path) -> Path:
    """The last checkpoint of `pre`, copied (its files are hard links into the store)."""
    return Path(shutil.copytree(pre / "checkpoints" / "step-000030", tmp_path / "step-000030"))


WHOLE = ("a checkpoint must hold the whole state to resume exactly: delete it to resume from the one before, "
         "or from the start")


def test_a_checkpoint_lacking_an_optimizer_tensor_is_refused(pre, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from targets import BuildError

    ckpt = copied_checkpoint(pre, tmp_path)
    with safe_open(str(ckpt / "optimizer.safetensors"), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    del tensors["state.3.exp_avg"]
    save_file(tensors, str(ckpt / "optimizer.safetensors"), metadata=meta)
    model = load(pre)
    with pytest.raises(BuildError) as exc:
        trainloop.load_checkpoint(ckpt, model, adamw_of(model), trainloop.LoopState())
    assert str(exc.value) == (f"checkpoint {ckpt}: optimizer.safetensors lacks 'state.3.exp_avg', which its "
                              f"optimizer state names; {WHOLE}")


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda s: s.pop("tokens_seen"), "lacks 'tokens_seen'"),
    (lambda s: s.update(data_cursor=30), "holds unknown 'data_cursor'"),
    (lambda s: s["early_stopping"].pop("bad_evals"), "lacks 'early_stopping.bad_evals'"),
    (lambda s: s["rng"].pop("torch"), "lacks 'rng.torch'"),
], ids=["missing", "unknown", "nested", "rng"])
def test_a_checkpoint_whose_loop_state_lacks_or_adds_a_key_is_refused(pre, tmp_path, edit, problem):
    from targets import BuildError

    ckpt = copied_checkpoint(pre, tmp_path)
    state = json.loads((ckpt / "state.json").read_text())
    edit(state)
    (ckpt / "state.json").write_text(json.dumps(state))
    model = load(pre)
    with pytest.raises(BuildError) as exc:
        trainloop.load_checkpoint(ckpt, model, adamw_of(model), trainloop.LoopState())
    assert str(exc.value) == f"checkpoint {ckpt}: state.json {problem}; {WHOLE}"


def test_a_checkpoint_of_another_optimizer_is_refused(pre, tmp_path):
    from targets import BuildError

    model = load(pre)
    sgd = optimizer_of("sgd-momentum", model)
    take_steps(model, sgd, 1)
    path = trainloop.save_checkpoint(tmp_path, model, sgd, trainloop.LoopState(step=1))
    with pytest.raises(BuildError) as exc:
        trainloop.load_checkpoint(path, model, adamw_of(model), trainloop.LoopState())
    assert str(exc.value) == (f"checkpoint {path}: optimizer.safetensors holds 1 parameter group, the optimizer 2; "
                              f"{WHOLE}")


def test_a_model_start_is_the_init_step_with_the_same_seed(proj, pre):
    """`model: tiny` (seed 0) starts from the very weights `init: init` (an init step, seed 0) loads."""
    assert build(proj, "frominit", {"s": with_(PRE, model=None, init="main.init", tokenizer="main.tok")}) == {
        "frominit.s": None}
    entry = proj.root / "build" / "frominit" / "s"
    assert manifest(entry)["key"] != manifest(pre)["key"]
    assert (entry / "model.safetensors").read_bytes() == (pre / "model.safetensors").read_bytes()


def test_a_trained_step_starts_another(proj, pre):
    import torch
    from safetensors.torch import load_file

    more = with_(PRE, model=None, init="main.pre", tokenizer="main.tok", max_steps=3,
                 optimizer={"lr": 1e-12}, schedule={"kind": "constant"}, eval={"every": 3, "batches": 2})
    assert build(proj, "more", {"s": more}) == {"more.s": None}
    before, after = load_file(pre / "model.safetensors"), load_file(proj.root / "build/more/s/model.safetensors")
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)  # it went on from there
    assert rows(proj.root / "build/more/s")[0]["loss"] < rows(pre)[0]["loss"] - 0.5


# ---------------------------------------------------------------- NaN guard, early stopping, objectives


def test_nan_stops_the_step_keeps_the_checkpoint_and_resume_is_exact(proj, pre, monkeypatch):
    import torch

    real, calls = losses.lm_loss, []

    def nan_at_step_8(logits, labels):
        loss = real(logits, labels)
        if torch.is_grad_enabled():  # training, not evaluation
            calls.append(1)
            if len(calls) == 8:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(losses, "lm_loss", nan_at_step_8)
    # keep: 3 only changes which checkpoints stay, so the key differs and the weights must not
    steps = {"s": with_(PRE, tokenizer="main.tok", checkpoints={"every": 5, "keep": 3})}
    failed = build(proj, "nan", steps)["nan.s"]
    key = key_of(proj, "nan.s")
    work = f"build/store/.work/{key}"
    assert failed.message == (
        f"nan.s: the loss is nan at optimizer step 8 of 30; training stopped before applying it, and the "
        f"last good checkpoint, kept, is {work}/checkpoints/step-000005. Lower optimizer.lr, add warmup or "
        f"set clip, then build again")
    ckpt = proj.root / work / "checkpoints" / "step-000005"
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    assert [r["step"] for r in rows(proj.root / work)] == list(range(1, 8))
    assert not store.is_complete(proj.root, key)

    monkeypatch.setattr(losses, "lm_loss", real)
    assert build(proj, "nan", steps) == {"nan.s": None}
    entry = proj.root / "build" / "nan" / "s"
    assert manifest(entry)["metrics"]["resumed_from"] == 5
    assert [r["step"] for r in rows(entry)] == list(range(1, 31))
    assert [r["loss"] for r in rows(entry)] == [r["loss"] for r in rows(pre)]
    assert (entry / "model.safetensors").read_bytes() == (pre / "model.safetensors").read_bytes()


def test_early_stopping(proj):
    # min_delta 10 cannot be met: the first evaluation sets the mark, the next two miss it
    steps = {"s": with_(PRE, tokenizer="main.tok", eval={"every": 2, "batches": 1},
                        early_stopping={"patience": 2, "min_delta": 10.0})}
    assert build(proj, "early", steps) == {"early.s": None}
    entry = proj.root / "build" / "early" / "s"
    m = manifest(entry)["metrics"]
    assert (m["steps"], m["stopped_early"], m["tokens_seen"]) == (6, True, 6 * 4 * 32)
    assert [r["step"] for r in rows(entry) if r["val_loss"] is not None] == [2, 4, 6]
    assert "step-000006" in m["checkpoints"]
    state = json.loads((entry / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["early_stopping"] == {"best": rows(entry)[1]["val_loss"], "bad_evals": 2}


def test_sft_on_a_text_dataset_is_a_spec_error(proj):
    path = proj.write("specs/pipelines/bad.yaml", yaml.safe_dump(
        {"kind": "pipeline", "name": "bad", "default": False,
         "steps": {"s": with_(PRE, tokenizer="main.tok", objective="sft")}}, sort_keys=False))
    try:
        with pytest.raises(SpecError) as exc:
            project.load(proj.root)
    finally:
        path.unlink()
    assert str(exc.value) == (
        "specs/pipelines/bad.yaml:9: steps.s.data: expected instruction/response datasets, since `objective: sft` "
        "learns responses only; found dataset 'docs', which gives texts\n"
        "  fix: map its records with `fields: {instruction: NAME, response: NAME}` in dataset 'docs', "
        "or use `objective: pretrain`")


def test_lm_loss_sum_counts_only_labelled_tokens():
    import torch
    import torch.nn.functional as F

    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[3, -100, 4, -100, -100], [-100, 7, 7, 1, -100]])
    total, count = losses.lm_loss_sum(logits, labels)
    keep = labels != -100
    direct = -F.log_softmax(logits, -1)[keep].gather(-1, labels[keep][:, None]).sum()
    assert count == 5
    torch.testing.assert_close(total, direct)
    moved = logits.clone()
    moved[~keep] += 100 * torch.randn(int((~keep).sum()), 11)  # what an ignored position predicts is not counted
    torch.testing.assert_close(losses.lm_loss_sum(moved, labels)[0], total)
    none, zero = losses.lm_loss_sum(logits, torch.full_like(labels, -100))
    assert (float(none), zero) == (0.0, 0)  # no NaN: the caller skips a step with nothing to learn


def test_sft_learns_the_responses_only(proj):
    """An sft step on instruction/response records trains, and its first loss is the
    cross-entropy of the initial weights on the response tokens of step 0's windows only."""
    import torch
    import torch.nn.functional as F

    steps = {"s": with_(PRE, tokenizer="main.tok", data="qa", objective="sft", max_steps=6, grad_accum=2,
                        eval={"every": 3, "batches": 2}),
             "p": with_(PRE, tokenizer="main.tok", data="qa", max_steps=2)}  # pretraining reads every token
    assert build(proj, "sft", steps) == {"sft.s": None, "sft.p": None}
    entry = proj.root / "build" / "sft" / "s"
    assert manifest(entry)["inputs"]["tokens.qa"]["task"] == "main.tok@qa"
    assert manifest(proj.root / "build" / "sft" / "p")["inputs"]["tokens.qa"]["task"] == "main.tok@qa"
    log = rows(entry)
    assert [r["step"] for r in log] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in log)
    assert [r["step"] for r in log if r["val_loss"] is not None] == [3, 6]
    assert all(math.isfinite(r["val_loss"]) for r in log if r["val_loss"] is not None)

    model = load(proj.root / "build" / "main" / "init").eval()  # seed 0, as `model: tiny` starts
    data = trainloop.TokenData({tokens("qa"): proj.root / "build" / "main" / "tok@qa"}, 512)
    total = count = full = 0.0
    for micro in range(2):
        ids, mask = data.train_batch(0, 0, micro, {"qa": 1.0}, 4, 32, mask=True)
        ids = torch.from_numpy(ids)
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=ids[:, :-1]).logits.float(), -1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
        response = torch.from_numpy(mask[:, 1:] == 1)
        total, count, full = total + nll[response].sum(), count + response.sum(), full + nll.mean() / 2
    assert 0 < count < 2 * 4 * 32  # the windows hold prompts and responses
    assert log[0]["loss"] == pytest.approx(float(total / count), rel=1e-5)
    assert abs(log[0]["loss"] - float(full)) > 1e-3


def test_distill_in_two_phases_from_a_step_and_a_folder(proj, pre, capsys):
    """The step teacher `a` is read from its stored outputs (top-64 at T 2), the folder teacher
    `b` runs live beside the student: while `a` teaches, windows are whole stored windows."""
    import torch
    from transformers import LlamaForCausalLM

    from targets.weights import init_state

    folder = proj.root / "teachers" / "wide"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json"):
        shutil.copy(proj.root / "build" / "main" / "wideinit" / name, folder / name)
    distill = {"teachers": {"a": {"step": "main.pre"}, "b": {"path": "teachers/wide"}},
               "temperature": 2.0, "alpha": 0.5,
               "phases": [{"name": "one", "steps": 4, "teachers": {"a": 1.5}},
                          {"name": "two", "steps": 3, "teachers": {"a": 0.5, "b": 1.0}}]}
    step = with_(PRE, tokenizer="main.tok", objective="distill", distill=distill, max_steps=None, seed=1,
                 eval={"every": 7, "batches": 1}, checkpoints={"every": 7, "keep": 1})
    assert build(proj, "kd", {"s": step, "s2": with_(step, optimizer={"lr": 0.001})}) == {"kd.s": None, "kd.s2": None}
    entry = proj.root / "build" / "kd" / "s"
    stored = proj.root / "build" / "main" / "pre~tok@docs~s32~k64~t2"
    assert manifest(entry)["inputs"]["teacher_outputs.a~docs~32"]["key"] == stored.resolve().name
    assert manifest(proj.root / "build" / "kd" / "s2")["inputs"]["teacher_outputs.a~docs~32"]["key"] == \
        stored.resolve().name  # one entry for both students
    loaded = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("  [kd.s] teacher '") and ("loaded:" in line or "stored outputs" in line)]
    # each teacher comes when its first phase begins, and `a` stays for the second phase
    windows = json.loads((stored / "teacher.json").read_text())["windows"]
    assert loaded == [f"  [kd.s] teacher 'a': stored outputs of step 'main.pre' (top-64, {windows:,} windows)",
                      "  [kd.s] teacher 'b' loaded: folder 'teachers/wide', 68,880 parameters"]
    log = rows(entry)
    assert [r["phase"] for r in log] == ["one"] * 4 + ["two"] * 3
    assert all(r["kd"] > 0 and r["loss"] == pytest.approx(0.5 * r["kd"] + 0.5 * r["ce"], rel=1e-5) for r in log)
    assert [sorted(r["kd_teachers"]) for r in log] == [["a"]] * 4 + [["a", "b"]] * 3
    assert all(sum(r["kd_teachers"].values()) == pytest.approx(r["kd"], rel=1e-5) for r in log)
    metrics = manifest(entry)["metrics"]
    assert metrics["teacher_forwards"] == 3  # `b`, live, in the 3 steps of phase two; `a` never runs
    one, two = metrics["phases"]
    assert one == {"name": "one", "first_step": 1, "loss_start": log[0]["loss"], "ce_start": log[0]["ce"],
                   "kd_start": log[0]["kd"], "kd_teachers_start": log[0]["kd_teachers"], "last_step": 4,
                   "loss_end": log[3]["loss"], "ce_end": log[3]["ce"], "kd_end": log[3]["kd"],
                   "kd_teachers_end": log[3]["kd_teachers"]}
    assert (two["name"], two["first_step"], two["last_step"]) == ("two", 5, 7)

    # step 1, recomputed by hand: the seed-1 student on the seed-1 whole windows, taught by `pre`'s
    # top-64 at T 2 as the entry stores them (float16)
    model_spec = project.load(proj.root).models["tiny"][0]
    student = LlamaForCausalLM.from_pretrained(pre)  # the architecture; the weights come next
    ids = json.loads((pre / "config.json").read_text())
    state = init_state(model_spec, {"pad": ids["pad_token_id"]}, 1)
    student.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    data = trainloop.TokenData({tokens("docs"): proj.root / "build" / "main" / "tok@docs"}, 512)
    drawn, [(_, rows_, picked)] = data.window_batch(1, 0, 0, {"docs": 1.0}, 4, 32)
    assert list(rows_) == [0, 1, 2, 3] and np.array_equal(drawn[:, 0], data.train["docs"][picked * 32])
    batch = torch.from_numpy(drawn)
    with torch.no_grad():
        logp = torch.log_softmax(load(pre)(batch[:, :-1]).logits / 2.0, -1)
        top, top_ids = logp.topk(64, dim=-1)
        rest = logp.scatter(-1, top_ids, float("-inf")).logsumexp(-1)
        target = losses.TopK(top.half(), top_ids, rest)
        loss, ce, kd, _ = losses.distill_loss(student(batch[:, :-1]).logits, [target], [1.5], batch[:, 1:], 2.0, 0.5)
    assert (log[0]["loss"], log[0]["ce"], log[0]["kd"]) == pytest.approx((loss.item(), ce.item(), kd.item()), rel=1e-4)


def test_curriculum_stages(proj):
    stages = [{"name": "foundation", "datasets": {"docs": 1.0}, "steps": 3, "seq_len": 16},
              {"name": "advanced", "datasets": {"docs": 1.0, "code": 1.0}, "steps": 2}]
    step = with_(PRE, tokenizer="main.tok", data=None, stages=stages, max_steps=None,
                 eval={"every": 5, "batches": 1}, checkpoints={"every": 5, "keep": 1})
    assert build(proj, "cur", {"s": step}) == {"cur.s": None}
    entry = proj.root / "build" / "cur" / "s"
    assert [(r["stage"], r["tokens"]) for r in rows(entry)] == [("foundation", 64)] * 3 + [("advanced", 128)] * 2
    m = manifest(entry)["metrics"]
    assert m["tokens_seen"] == 3 * 64 + 2 * 128
    assert [s["name"] for s in m["stages"]] == ["foundation", "advanced"]
    assert manifest(entry)["inputs"].keys() == {"tokenizer", "tokens.code", "tokens.docs"}


def test_bfloat16_autocast(proj, pre):
    step = with_(PRE, tokenizer="main.tok", dtype="bfloat16", max_steps=4, eval={"every": 4, "batches": 1},
                 checkpoints={"every": 4, "keep": 1})
    assert build(proj, "bf16", {"s": step}) == {"bf16.s": None}
    entry = proj.root / "build" / "bf16" / "s"
    log = rows(entry)
    assert all(math.isfinite(r["loss"]) for r in log)
    assert log[0]["loss"] != rows(pre)[0]["loss"]  # it did compute in bfloat16
    assert log[0]["loss"] == pytest.approx(rows(pre)[0]["loss"], rel=0.02)
    assert load(entry).dtype.is_floating_point and manifest(entry)["metrics"]["dtype"] == "bfloat16"
    assert json.loads((entry / "config.json").read_text())["dtype"] == "float32"


def test_tied_embeddings(proj):
    from safetensors.torch import load_file

    step = with_(PRE, model="tied", tokenizer="main.tok", max_steps=3, eval={"every": 3, "batches": 1},
                 checkpoints={"every": 3, "keep": 1})
    assert build(proj, "tied", {"s": step}) == {"tied.s": None}
    entry = proj.root / "build" / "tied" / "s"
    model = load(entry)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    for path in (entry / "model.safetensors", entry / "checkpoints" / "step-000003" / "model.safetensors"):
        assert "lm_head.weight" not in load_file(path) and "model.embed_tokens.weight" in load_file(path)
    assert rows(entry)[-1]["loss"] < rows(entry)[0]["loss"]


# ---------------------------------------------------------------- a real kill -9


KILLED = with_(PRE, max_steps=60, seq_len=64, batch_size=8, checkpoints={"every": 5, "keep": 2})


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_bytes(tmp_path_factory):
    """doit is killed with SIGKILL once the first checkpoint exists; the next `doit` resumes
    from it and ends with the bytes of an uninterrupted build in another project."""
    a, b = (new_project(tmp_path_factory.mktemp(n) / "proj") for n in ("killed", "whole"))
    for p in (a, b):
        p.write("specs/pipelines/run.yaml", yaml.safe_dump(
            {"kind": "pipeline", "name": "run", "steps": {"s": with_(KILLED, tokenizer="main.tok")}}))
    work = kill_at_first_checkpoint(a, "run.s")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    key = key_of(a, "run.s")
    assert not store.is_complete(a.root, key)  # killed mid-run: no entry, only the work directory
    done = [p.name for p in (work / key / "checkpoints").iterdir() if p.name.startswith("step-")]
    assert done and "step-000060" not in done

    # bytes, not text: text mode would turn the progress line's carriage returns into newlines
    result = subprocess.run([sys.executable, "-m", "doit", "run.s"], cwd=a.root, env=env, capture_output=True,
                            timeout=300)
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, stderr
    assert [line[3:] for line in stdout.splitlines() if line.startswith(".  ")] == ["run.s"]
    assert "resuming from checkpoint build/store/.work/" in stderr
    progress = stderr.split("\r")  # one line rewritten in place, ended by a newline
    assert len(progress) > 1 and all("\n" not in p for p in progress[1:-1])
    assert progress[-1].startswith("  step 60/60  loss ") and progress[-1].endswith("ETA 0:00:00  \n")
    entry = a.root / "build" / "run" / "s"
    resumed_from = manifest(entry)["metrics"]["resumed_from"]
    assert 5 <= resumed_from < 60 and resumed_from % 5 == 0

    assert build(b, "run", {"s": with_(KILLED, tokenizer="main.tok")}) == {"run.s": None}
    whole = b.root / "build" / "run" / "s"
    assert manifest(whole)["key"] == key and manifest(whole)["metrics"]["resumed_from"] is None
    assert (entry / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    assert [r["loss"] for r in rows(entry)] == [r["loss"] for r in rows(whole)]


def test_an_sft_step_without_response_tokens_changes_nothing(proj, monkeypatch, capsys):
    """Windows of prompts only (here: step 1's masks zeroed) give loss 0 and no update, not a NaN,
    and the build says so."""
    from safetensors.torch import load_file

    real = trainloop.TokenData.train_batch

    def prompts_at_step_1(self, seed, i, micro, datasets, batch, seq_len, mask=False, share=None):
        ids, masks = real(self, seed, i, micro, datasets, batch, seq_len, mask, share)
        return ids, masks * (i != 0)

    monkeypatch.setattr(trainloop.TokenData, "train_batch", prompts_at_step_1)
    steps = {"s": with_(PRE, tokenizer="main.tok", data="qa", objective="sft", max_steps=3, grad_accum=2,
                        eval={"every": 3, "batches": 1}, checkpoints={"every": 1, "keep": 3})}
    assert build(proj, "empty", steps) == {"empty.s": None}
    entry = proj.root / "build" / "empty" / "s"
    log = rows(entry)
    assert (log[0]["loss"], log[0]["grad_norm"]) == (0.0, 0.0)
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in log[1:])
    first = load_file(str(entry / "checkpoints" / "step-000001" / "model.safetensors"))
    init = load_file(str(proj.root / "build" / "main" / "init" / "model.safetensors"))
    assert first.keys() == init.keys() and all((first[k] == init[k]).all() for k in init)
    assert ("  [empty.s] 1 of the 3 optimizer steps (step 1) saw no response token and changed nothing; raise "
            "seq_len (now 32) so that windows reach past the prompts, or batch_size, or shorten the prompts\n"
            ) in capsys.readouterr().err


def test_an_sft_run_that_never_sees_a_response_token_fails(proj, monkeypatch):
    real = trainloop.TokenData.train_batch

    def prompts_only(self, seed, i, micro, datasets, batch, seq_len, mask=False, share=None):
        ids, masks = real(self, seed, i, micro, datasets, batch, seq_len, mask, share)
        return ids, masks * 0

    monkeypatch.setattr(trainloop.TokenData, "train_batch", prompts_only)
    steps = {"s": with_(PRE, tokenizer="main.tok", data="qa", objective="sft", max_steps=2,
                        eval={"every": 2, "batches": 1}, checkpoints={"every": 2, "keep": 1})}
    failed = build(proj, "never", steps)["never.s"]
    assert str(failed) == (
        "TaskFailed\nnever.s: none of the 2 optimizer steps saw a response token: every window of 32 tokens fell inside prompts, so "
        "sft learned nothing; raise seq_len (now 32) so that windows reach past the prompts, or batch_size, or "
        "shorten the prompts\n")


def test_epochs_give_the_length_from_the_tokenized_data(proj):
    # batch 64 x seq 64 = 4,096 tokens per step: a few steps cover the small train split
    spec = {k: v for k, v in PRE.items() if k != "max_steps"}
    steps = {"s": with_(spec, tokenizer="main.tok", epochs=0.5, batch_size=64, seq_len=64,
                        eval={"every": 100, "batches": 1}, checkpoints={"every": 100, "keep": 1})}
    assert build(proj, "epochs", steps) == {"epochs.s": None}
    train_tokens = json.loads((proj.root / "build/main/tok@docs/tokens.json").read_text())["splits"]["train"]["tokens"]
    expected = -(-train_tokens // (2 * 64 * 64))  # ceil(0.5 * tokens / 4,096)
    assert expected >= 2
    assert [r["step"] for r in rows(proj.root / "build" / "epochs" / "s")] == list(range(1, expected + 1))


def test_a_folder_teacher_with_another_tokenizer_is_refused(proj):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    folder = proj.root / "teachers" / "other-tok"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json"):
        shutil.copy(proj.root / "build" / "main" / "wideinit" / name, folder / name)
    other = Tokenizer(models.BPE())
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    other.train_from_iterator(["a different corpus entirely"] * 50, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    other.save(str(folder / "tokenizer.json"))
    distill = {"teachers": {"b": {"path": "teachers/other-tok"}},
               "phases": [{"name": "one", "steps": 2, "teachers": {"b": 1.0}}]}
    step = with_(PRE, tokenizer="main.tok", objective="distill", distill=distill, max_steps=None,
                 eval={"every": 2, "batches": 1}, checkpoints={"every": 2, "keep": 1})
    failed = build(proj, "othertok", {"s": step})["othertok.s"]
    ours = Tokenizer.from_file(str(proj.root / "build/main/tok/tokenizer.json")).get_vocab()
    theirs = other.get_vocab()
    differ = sum(1 for t, i in ours.items() if theirs.get(t) != i)
    assert 0 < differ <= len(ours)
    assert str(failed) == (
        f"TaskFailed\nothertok.s: teacher 'b' (folder 'teachers/other-tok') has another tokenizer than the student: "
        f"{len(theirs):,} tokens against the student's {len(ours):,}, {differ:,} of the student's tokens with another "
        f"id or missing; distill from a teacher trained with the student's tokenizer\n")
