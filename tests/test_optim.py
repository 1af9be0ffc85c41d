"""Optimizers (targets/optim.py): AdamW, Muon, SGD and a plug-in, Grokfast's filter and QK-clip.

Each kind trains the tiny model of the test projects and lowers its loss; a run interrupted
mid-way and resumed from its checkpoint ends with the bytes of an uninterrupted one, for every
kind with Grokfast and QK-clip on; the default AdamW steps exactly as the trainer's AdamW did
before optimizers had kinds. Grokfast's filter is checked against a hand computation, QK-clip's
recorded logits against the q and k transformers' own attention receives, and the compiler's
refusals word for word.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from compiler import graph, project
from compiler.keys import keyed
from compiler.specs import Optimizer, TrainStep
from conftest import TINY_SPECS, Project, build_pipeline, code_project, tiny_corpus
from targets import BuildError, optim, trainloop
from targets import train as train_builder

LION = '''
import torch


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al., 2023): steps by the sign of an interpolation of momentum and gradient."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m * beta1 + p.grad * (1 - beta1)), alpha=-group["lr"])
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)


class NotAnOptimizer:
    def __init__(self, params, lr):
        pass
'''

BASE = {"kind": "train", "model": "tiny", "tokenizer": "main.tok", "data": "docs", "max_steps": 10, "batch_size": 4,
        "seq_len": 32, "schedule": {"warmup_steps": 2}, "eval": {"every": 5, "batches": 1},
        "checkpoints": {"every": 5, "keep": 3}}
KINDS = {
    "adamw": {"lr": 0.01},
    "muon": {"kind": "muon", "lr": 0.01, "muon": {"lr": 0.05}},
    "sgd": {"kind": "sgd", "lr": 0.3, "nesterov": True},
    "lion": {"kind": "module:optim/lion.py:Lion", "lr": 0.003, "weight_decay": 0.01, "options": {"betas": [0.9, 0.99]}},
}
FILTERED = {"grokfast": {"alpha": 0.9, "lambda": 0.5}, "qk_clip": 0.06}  # τ: the tiny model's logits are ~0.05-0.08
CUT_AT = 7  # the step index the interrupted runs stop at; they resume from their checkpoint of step 5


def step(optimizer: dict, **changes) -> dict:
    return {**BASE, "optimizer": optimizer, **changes}


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    """conftest's tiny project (docs -> tok -> init) and the plug-in optimizer optim/lion.py."""
    p = code_project(tmp_path_factory.mktemp("optim") / "proj")
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    for rel, text in TINY_SPECS.items():
        p.write(rel, text)
    p.write("optim/lion.py", LION)
    return p


def rows(entry: Path) -> list[dict]:
    return [json.loads(line) for line in (entry / "metrics.jsonl").read_text().splitlines()]


def measured(entry: Path) -> list[tuple]:
    """What a run computed per step (its timings aside)."""
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"], r["val_loss"]) for r in rows(entry)]


# ---------------------------------------------------------------- training with each kind, and resume

@pytest.fixture(scope="module")
def runs(proj, tmp_path_factory) -> dict[str, Path]:
    """Per kind: a plain run (`KIND`), and with Grokfast and QK-clip on an uninterrupted run
    (`KIND-whole`) and one stopped at step index CUT_AT (`KIND-cut`), then built again; checkpoints
    are kept 3 or 2 (so the two are different steps, with different keys, whose weights must agree)."""
    steps = {}
    for name, o in KINDS.items():
        steps[name] = step(o)
        steps[f"{name}-whole"] = step({**o, **FILTERED})
        steps[f"{name}-cut"] = step({**o, **FILTERED}, checkpoints={"every": 5, "keep": 2})
    real, clipped = train_builder.Trainer.step, []
    real_factors = optim.clip_factors

    def stopping(self, i):
        if self.job.task.endswith("-cut") and i == CUT_AT:
            raise BuildError("stopped here by the test")
        return real(self, i)

    def factors(max_logits, tau, kv_heads):
        clipped.append(bool((max_logits > tau).any()))
        return real_factors(max_logits, tau, kv_heads)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_builder.Trainer, "step", stopping)
        mp.setattr(optim, "clip_factors", factors)
        first = build_pipeline(proj, "o", steps)
    assert {t: getattr(r, "message", None) for t, r in first.items()} == {
        f"o.{s}": (f"o.{s}: stopped here by the test" if s.endswith("-cut") else None) for s in steps}
    assert any(clipped)  # τ bites: QK-clip scaled some heads
    assert build_pipeline(proj, "o", steps) == {f"o.{s}": None for s in steps}
    return {s: proj.root / "build" / "o" / s for s in steps}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow  # with the next tests: 16 builds of 10 steps (~30 s)
def test_each_kind_trains_and_lowers_the_loss(runs, kind):
    losses = [r["loss"] for r in rows(runs[kind])]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.25, losses


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow  # the runs fixture
def test_a_resumed_run_ends_with_the_bytes_of_an_uninterrupted_one(runs, kind):
    whole, cut = runs[f"{kind}-whole"], runs[f"{kind}-cut"]
    manifest = json.loads((cut / "manifest.json").read_text())
    assert manifest["metrics"]["resumed_from"] == 5
    assert measured(cut) == measured(whole)
    assert (cut / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    for name in ("optimizer.safetensors", "model.safetensors"):
        last = [run / "checkpoints" / "step-000010" / name for run in (cut, whole)]
        assert last[0].read_bytes() == last[1].read_bytes(), name
    assert measured(runs[kind]) != measured(whole)  # the filters changed the run


def optimizer_file(entry: Path) -> tuple[dict, dict]:
    """(tensor names -> shapes, the JSON part) of the last checkpoint's optimizer.safetensors."""
    from safetensors import safe_open

    with safe_open(str(entry / "checkpoints" / "step-000010" / "optimizer.safetensors"), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, json.loads(f.metadata()["optimizer"])


@pytest.mark.slow  # the runs fixture
def test_muon_checkpoints_hold_both_optimizers_and_grokfast_state(runs):
    """Muon's group of the hidden matrices (momentum buffers), then AdamW's two (the LM head,
    decayed; embeddings and norms), numbered across all three; Grokfast's h beside each."""
    tensors, tree = optimizer_file(runs["muon-whole"])
    muon, head, rest = tree["param_groups"]
    # 2 layers × (q, k, v, o, gate, up, down); the LM head; the embedding, 2 × 2 norms and the final norm
    assert [len(g["params"]) for g in tree["param_groups"]] == [14, 1, 6]
    assert muon["params"] + head["params"] + rest["params"] == list(range(21))
    schedule = TrainStep.model_validate(step(KINDS["muon"])).schedule
    assert (muon["lr"], muon["initial_lr"], muon["ns_steps"], muon["nesterov"]) == (
        trainloop.scheduled(0.05, schedule, 9, 10), 0.05, 5, True)
    assert head["lr"] == rows(runs["muon-whole"])[-1]["lr"] == trainloop.scheduled(0.01, schedule, 9, 10)
    assert (head["initial_lr"], head["betas"], rest["weight_decay"]) == (0.01, {"tuple": [0.9, 0.95]}, 0.0)
    assert set(tensors) == {f"state.{i}.{k}" for i in range(14) for k in ("momentum_buffer", "grokfast_ema")} | {
        f"state.{i}.{k}" for i in range(14, 21) for k in ("step", "exp_avg", "exp_avg_sq", "grokfast_ema")}
    assert all(tensors[f"state.{i}.momentum_buffer"] == tensors[f"state.{i}.grokfast_ema"] for i in range(14))  # shapes


def test_muon_takes_the_hidden_linear_maps_and_adamw_the_rest():
    """In a plug-in's module too: the LM head (`head`), the embedding, norms and biases go to AdamW."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.mix = torch.nn.Linear(4, 4)
            self.norm = torch.nn.Parameter(torch.ones(4))
            self.head = torch.nn.Linear(4, 10, bias=False)

    net = Net()
    opt = optim.make(net, Optimizer.model_validate({"kind": "muon", "weight_decay": 0.1}), Path("."))
    muon, adamw = opt.parts
    assert (type(muon).__name__, type(adamw).__name__) == ("Muon", "AdamW")
    name = {id(p): n for n, p in net.named_parameters()}
    assert [[name[id(p)] for p in g["params"]] for g in muon.param_groups] == [["mix.weight"]]
    assert [([name[id(p)] for p in g["params"]], g["weight_decay"], g["initial_lr"]) for g in adamw.param_groups] == [
        (["head.weight"], 0.1, 3e-4), (["norm", "embed.weight", "mix.bias"], 0.0, 3e-4)]
    assert muon.param_groups[0]["initial_lr"] == 0.02


def test_the_default_is_adamw_stepping_as_it_always_did(proj):
    """The trainer's optimizer for the default spec takes the same steps as the AdamW it built
    before optimizers had kinds (two groups, lr set by the schedule), bit for bit."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = TrainStep.model_validate(step({"lr": 0.01, "weight_decay": 0.1}, model="tiny", tokenizer="tok"))
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300)
    torch.manual_seed(0)
    old_model, new_model = LlamaForCausalLM(config), LlamaForCausalLM(config)
    new_model.load_state_dict(old_model.state_dict())
    decay, other = [], []  # the trainer's AdamW until now, as it was written
    for name, p in old_model.named_parameters():
        (decay if p.ndim >= 2 and "embed_tokens" not in name else other).append(p)
    o = spec.optimizer
    old = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=o.lr, betas=o.betas, eps=o.eps)
    new = optim.make(new_model, o, proj.root)
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        ids = torch.randint(0, 300, (2, 17), generator=g)
        for group in old.param_groups:
            group["lr"] = trainloop.lr_at(spec, i, 6)
        for group in new.param_groups:
            group["lr"] = trainloop.scheduled(group["initial_lr"], spec.schedule, i, 6)
        for model, opt in ((old_model, old), (new_model, new)):  # as Trainer.step does, then and now
            model(input_ids=ids[:, :-1], labels=ids[:, 1:]).loss.backward()
            if opt is new:
                new.filter_gradients()  # no grokfast: nothing
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), 0.5)
            opt.step()
            if opt is new:
                new.clip_qk()  # no qk_clip: nothing
            opt.zero_grad(set_to_none=True)
    assert all(torch.equal(a, b) for a, b in zip(old_model.state_dict().values(), new_model.state_dict().values()))
    a, b = old.state_dict(), new.state_dict()
    assert [{k: v for k, v in group.items() if k != "initial_lr"} for group in b["param_groups"]] == a["param_groups"]
    assert a["state"].keys() == b["state"].keys() and all(
        list(a["state"][i]) == list(b["state"][i]) and all(torch.equal(a["state"][i][k], b["state"][i][k])
                                                           for k in a["state"][i]) for i in a["state"])


def test_a_state_dict_round_trips_through_a_checkpoint(tmp_path):
    """Muon with Grokfast: save_checkpoint / load_checkpoint restore every part's state exactly,
    and the next steps are the same."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from test_train import assert_same_state

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300)
    o = Optimizer.model_validate({"kind": "muon", "grokfast": {}})

    def steps(model, opt, n, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            ids = torch.randint(0, 300, (2, 9), generator=g)
            model(input_ids=ids[:, :-1], labels=ids[:, 1:]).loss.backward()
            opt.filter_gradients()
            opt.step()
            opt.zero_grad()

    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    fresh = LlamaForCausalLM(config)
    opt = optim.make(model, o, tmp_path)
    steps(model, opt, 3, 0)
    path = trainloop.save_checkpoint(tmp_path, model, opt, trainloop.LoopState(step=3))
    again = optim.make(fresh, o, tmp_path)
    trainloop.load_checkpoint(path, fresh, again, trainloop.LoopState())
    assert_same_state(again.state_dict(), opt.state_dict())
    steps(model, opt, 2, 1)
    steps(fresh, again, 2, 1)
    assert_same_state(again.state_dict(), opt.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


# ---------------------------------------------------------------- Grokfast

def test_grokfast_filter_matches_a_hand_computation():
    """Two steps: h₁ = g₁, g₁ + λ·h₁; then h₂ = α·h₁ + (1 − α)·g₂, g₂ + λ·h₂ (by hand in float64; float32 rounds within 1e-6).
    AdamW steps in between, with h in its state (it must not take h for state of its own)."""
    import torch

    alpha, lam = 0.9, 0.3
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = optim.Optimizers([torch.optim.AdamW([w, p], lr=0.1)], grokfast=(alpha, lam))
    g1, g2 = torch.tensor([0.2, -0.4, 1.0]), torch.tensor([-1.0, 0.3, 0.25])
    p.grad, w.grad = g1.clone(), torch.ones(2, 2)
    opt.filter_gradients()
    h1 = g1.double()
    assert torch.allclose(p.grad.double(), g1.double() + lam * h1, rtol=1e-6, atol=0)
    opt.step()
    assert sorted(opt.parts[0].state[p]) == ["exp_avg", "exp_avg_sq", "grokfast_ema", "step"]
    p.grad, w.grad = g2.clone(), torch.ones(2, 2)
    opt.filter_gradients()
    h2 = alpha * h1 + (1 - alpha) * g2.double()
    assert torch.allclose(opt.parts[0].state[p][optim.EMA].double(), h2, rtol=1e-6, atol=0)
    assert torch.allclose(p.grad.double(), g2.double() + lam * h2, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- QK-clip

def tiny(arch: str, layers: int = 2, kv_heads: int = 2):
    """A randomly initialized transformers model of `arch` (mistral with a window of 4), in
    training mode, with attention logits large enough to clip."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = {"sliding_window": 4} if arch == "mistral" else {}
    config = AutoConfig.for_model(arch, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                  num_attention_heads=4, num_key_value_heads=kv_heads, vocab_size=300,
                                  initializer_range=0.2, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).train()
    with torch.no_grad():  # qwen2's biases start at zero: give them values a clip would change
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.bias", "k_proj.bias")):
                p.normal_(0, 0.5)
    return model


ARCHS = ["llama", "qwen2", "mistral"]


def spied_logits_max(model, ids) -> list:
    """Per attention layer, the max over batch and kept positions of q·kᵀ·scaling for each query
    head, from the q and k transformers hands its attention function (after RoPE)."""
    import torch
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    seen = []

    def spy(module, query, key, value, attention_mask, scaling=None, **kwargs):
        seen.append((query.detach(), key.detach(), scaling, kwargs.get("sliding_window")))
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    AttentionInterface.register("qk_spy", spy)
    AttentionMaskInterface.register("qk_spy", sdpa_mask)
    model.set_attn_implementation("qk_spy")
    try:
        model(input_ids=ids)
    finally:
        model.set_attn_implementation("sdpa")
    out = []
    for q, k, scaling, window in seen:
        s = q.shape[2]
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        logits = (q.double() @ k.double().transpose(-1, -2)) * scaling
        i, j = torch.arange(s)[:, None], torch.arange(s)[None, :]
        keep = (j <= i) & ((j > i - window) if window else True)
        out.append(logits.masked_fill(~keep, float("-inf")).amax(dim=(0, 2, 3)))
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_the_recorded_max_logit_is_that_of_the_q_and_k_attention_receives(arch):
    import torch

    model = tiny(arch)
    clip = optim.QKClip(model, 1.0)
    ids = torch.randint(0, 300, (3, 12), generator=torch.Generator().manual_seed(1))
    direct = spied_logits_max(model, ids)  # a forward pass in training mode: recorded too
    recorded = [t.max_logits() for t in clip.targets]
    assert len(recorded) == 2 and all(r.shape == (4,) and r.dtype == torch.float32 for r in recorded)
    assert torch.cat(recorded).tolist() == pytest.approx(torch.cat(direct).tolist(), rel=1e-5)
    assert max(float(d.max()) for d in direct) > 1.0
    if arch == "qwen2":  # the biases are scaled with the weights
        assert [len(t.q) for t in clip.targets] == [2, 2]
    model.eval()
    model(input_ids=ids)
    assert [t.max_logits() for t in clip.targets] == [None, None]  # evaluation records nothing


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_qk_clip_brings_heads_over_tau_to_tau_and_leaves_the_others(arch, kv_heads):
    """One layer (so a clip changes no later layer's inputs), an optimizer step that changes
    nothing (lr 0), τ the median of the heads' max logits: afterwards on the same batch every
    head's max is at most τ, those that were over are at τ, and the rows of the others are
    untouched, bit for bit. With grouped-query attention too (4 query heads on 2 or 1 key heads)."""
    import torch

    model = tiny(arch, layers=1, kv_heads=kv_heads)
    opt = optim.make(model, Optimizer.model_validate({"lr": 1e-9, "qk_clip": 1.0}), Path("."))
    for group in opt.param_groups:
        group["lr"] = 0.0
    ids = torch.randint(0, 300, (3, 12), generator=torch.Generator().manual_seed(2))
    model(input_ids=ids)
    (target,) = opt.qk.targets
    before = target.max_logits()
    tau = opt.qk.tau = float(before.median())
    over = before > tau
    assert 0 < int(over.sum()) < 4
    rows = {name: [w.detach().clone() for w in getattr(target, name)] for name in ("q", "k")}
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.clip_qk()
    model(input_ids=ids)
    after = target.max_logits()
    assert bool((after <= tau * (1 + 1e-6)).all()), (after, tau)
    assert after[over].tolist() == pytest.approx([tau] * int(over.sum()), rel=1e-5)
    assert after[~over].tolist() == before[~over].tolist()
    group = 4 // kv_heads
    for name, heads in (("q", range(4)), ("k", range(kv_heads))):
        for w, old in zip(getattr(target, name), rows[name]):
            blocks, old_blocks = w.detach().view(len(heads), -1), old.view(len(heads), -1)
            for h in heads:
                untouched = not bool(over[h].item() if name == "q" else over[h * group:(h + 1) * group].all())
                assert torch.equal(blocks[h], old_blocks[h]) == untouched, (name, h)


def test_clip_factors_of_a_shared_key_head():
    """Heads 0 and 1 share key head 0 and are both over τ (γ 0.5 and 0.25): the key takes sqrt(0.5),
    the queries the rest; heads 2 and 3 share key head 1, head 3 alone over (γ 0.8): the key
    keeps its rows (head 2 is under), query 3 takes all of 0.8."""
    import torch

    q, k = optim.clip_factors(torch.tensor([4.0, 8.0, 1.0, 2.5]), 2.0, 2)
    assert k.tolist() == pytest.approx([0.5 ** 0.5, 1.0])
    assert q.tolist() == pytest.approx([0.5 ** 0.5, 0.25 / 0.5 ** 0.5, 1.0, 0.8])
    assert (q * k.repeat_interleave(2)).tolist() == pytest.approx([0.5, 0.25, 1.0, 0.8])


def test_a_model_without_qk_clip_targets_is_refused():
    import torch

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(BuildError) as exc:
        optim.make(Plain(), Optimizer(qk_clip=30.0), Path("."))
    assert str(exc.value) == ("optimizer.qk_clip scales the query and key weights of attention heads, and model class "
                              "Plain does not say where they are: define `qk_clip_targets()` in it (README, "
                              "Optimizers), or remove qk_clip")


def test_a_plugin_model_gives_its_own_qk_clip_targets():
    """A plug-in's attention (q, k, heads, max_logits) as `qk_clip_targets()` returns it; the rows of
    its head over τ are scaled, its key projection shared by both heads."""
    import torch

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(4, 4, bias=False)   # 2 heads of 2
            self.k = torch.nn.Linear(4, 2, bias=False)   # 1 key head
            self.best = torch.tensor([3.0, 1.0])

        def qk_clip_targets(self):
            return [(self.q.weight, self.k.weight, 2, lambda: self.best)]

    model = Attention()
    q, k = model.q.weight.detach().clone(), model.k.weight.detach().clone()
    opt = optim.make(model, Optimizer(qk_clip=2.0), Path("."))
    opt.clip_qk()
    assert torch.equal(model.q.weight[:2], q[:2] * (2.0 / 3.0)) and torch.equal(model.q.weight[2:], q[2:])
    assert torch.equal(model.k.weight, k)


# ---------------------------------------------------------------- plug-in optimizers at build time

@pytest.mark.parametrize(("o", "message"), [
    ({"kind": "module:optim/lion.py:NotAnOptimizer"},
     "o2.s: optimizer.kind module:optim/lion.py:NotAnOptimizer: NotAnOptimizer is not a torch.optim.Optimizer "
     "subclass: derive it from torch.optim.Optimizer (README, Optimizers)"),
    ({"kind": "module:optim/lion.py:Lion", "lr": 0.001, "options": {"beta": 0.9}},
     "o2.s: optimizer.kind module:optim/lion.py:Lion: Lion(param_groups, lr=0.001, beta=0.9) failed: TypeError: "
     "Lion.__init__() got an unexpected keyword argument 'beta'; fix optimizer.options or the class"),
])
def test_a_plugin_that_cannot_be_built_is_a_build_error(proj, o, message):
    failed = build_pipeline(proj, "o2", {"s": step(o, max_steps=1)})["o2.s"]
    assert failed.message == message


# ---------------------------------------------------------------- the spec and the compiler

def test_writing_out_a_kinds_defaults_keys_the_same():
    def key(**o):
        return keyed(TrainStep.model_validate(step(o)))

    assert key() == key(kind="adamw")
    assert key(kind="sgd") == key(kind="sgd", momentum=0.9, nesterov=False)
    assert key(kind="muon") == key(kind="muon", muon={"lr": 0.02, "momentum": 0.95, "nesterov": True, "ns_steps": 5,
                                                      "weight_decay": 0.0, "adjust_lr": "original"})
    assert key(grokfast={}) == key(grokfast={"alpha": 0.98, "lambda": 2.0})
    assert key(kind="sgd") != key(kind="sgd", momentum=0.5)
    assert key(grokfast={"lambda": 0.3})["optimizer"]["grokfast"] == {"alpha": 0.98, "lambda_": 0.3}


def test_the_spec_round_trips_through_its_json():
    """The runner and torchrun's processes get the spec as JSON (`lambda`, not Python's `lambda_`)."""
    spec = TrainStep.model_validate(step({"kind": "muon", "grokfast": {"lambda": 0.3}, "qk_clip": 30}))
    dumped = spec.model_dump(mode="json")
    assert dumped["optimizer"]["grokfast"] == {"alpha": 0.98, "lambda": 0.3}
    assert TrainStep.model_validate(dumped) == spec


def compile_error(p: Project, optimizer: str, extra: str = "") -> str:
    """The SpecError of the tiny project with a train step `s` whose optimizer is `optimizer`
    (line 12 of specs/pipelines/o.yaml, 13 after a line of `extra`; `lora` starts from main.init)."""
    from compiler.errors import SpecError

    start = "init: main.init" if "lora" in extra else "model: tiny"
    p.write("specs/pipelines/o.yaml", (
        f"kind: pipeline\nname: o\nsteps:\n  s:\n    kind: train\n    {start}\n    tokenizer: main.tok\n"
        "    data: docs\n    max_steps: 10\n    batch_size: 4\n    seq_len: 32\n" + extra +
        f"    optimizer: {optimizer}\n"))
    with pytest.raises(SpecError) as info:
        graph.plans(project.load(p.root))
    return str(info.value)


AT = "specs/pipelines/o.yaml:{line}: steps.s.optimizer"
COMPILE_ERRORS = {
    "unknown-kind": ("{kind: adam}", "",
                     f"{AT.format(line=12)}.kind: expected one of 'adamw', 'muon', 'sgd' or 'module:PATH:CLASS' (PATH a "
                     ".py file relative to the project root, CLASS the torch.optim.Optimizer subclass it defines); "
                     "found 'adam'\n  fix: did you mean 'adamw'?"),
    "momentum-of-adamw": ("{momentum: 0.9}", "",
                          f"{AT.format(line=12)}.momentum: expected `momentum` only with `kind: sgd`; found `kind: "
                          "adamw`\n  fix: remove `momentum`, or set `kind: sgd` (Muon's own momentum is "
                          "`muon.momentum`)"),
    "betas-of-sgd": ("{kind: sgd, betas: [0.9, 0.99]}", "",
                     f"{AT.format(line=12)}.betas: expected `betas` only with `kind: adamw` or `kind: muon`; found "
                     "`kind: sgd`\n  fix: remove `betas`, or set `kind: adamw` or `kind: muon`"),
    "muon-of-adamw": ("{muon: {lr: 0.01}}", "",
                      f"{AT.format(line=12)}.muon: expected `muon` only with `kind: muon`; found `kind: adamw`\n"
                      "  fix: remove `muon`, or set `kind: muon`"),
    "options-of-muon": ("{kind: muon, options: {foo: 1}}", "",
                        f"{AT.format(line=12)}.options: expected `options` only with a plug-in `kind: "
                        "module:PATH:CLASS`; found `kind: muon`\n  fix: remove `options`: the settings of Ingot's own "
                        "kinds are fields of `optimizer:`"),
    "eps-of-a-plugin": ("{kind: 'module:optim/lion.py:Lion', eps: 1.0e-6}", "",
                        f"{AT.format(line=12)}.eps: expected `eps` only with `kind: adamw` or `kind: muon`; found "
                        "`kind: module:optim/lion.py:Lion`\n  fix: give a plug-in's settings in `options`, e.g. "
                        "`options: {eps: ...}`"),
    "option-of-a-mapping": ("{kind: 'module:optim/lion.py:Lion', options: {betas: {b1: 0.9}}}", "",
                            f"{AT.format(line=12)}.options.betas: expected a number, true or false, a string, or a "
                            "list of them; found a mapping"),
    "nesterov-without-momentum": ("{kind: sgd, momentum: 0, nesterov: true}", "",
                                  f"{AT.format(line=12)}.nesterov: expected momentum above 0 with `nesterov: true` "
                                  "(Nesterov's look-ahead follows the momentum); found momentum 0\n  fix: give "
                                  "`momentum:` (e.g. 0.9), or remove `nesterov`"),
    "plugin-file-missing": ("{kind: 'module:optim/lino.py:Lion'}", "",
                            f"{AT.format(line=12)}.kind: expected an existing file or folder (relative to the project "
                            "root); found 'optim/lino.py', which does not exist\n  fix: check the path; it is "
                            "relative to the project root"),
    "plugin-class-missing": ("{kind: 'module:optim/lion.py:Lino'}", "",
                             f"{AT.format(line=12)}.kind: expected a top-level `Lino` in 'optim/lion.py'; found none: "
                             "it defines the classes Lion, NotAnOptimizer\n  fix: define class Lino in optim/lion.py, "
                             "or name one of its classes"),
    "grokfast-lambda-misspelt": ("{grokfast: {lamda: 0.3}}", "",
                                 f"{AT.format(line=12)}.grokfast.lamda: expected a known key (alpha, lambda); found "
                                 "unknown key 'lamda'\n  fix: did you mean 'lambda'?"),
    "grokfast-lambda-zero": ("{grokfast: {lambda: 0}}", "",
                             f"{AT.format(line=12)}.grokfast.lambda: expected a number > 0; found 0\n"
                             "  fix: use a value > 0"),
    "qk-clip-with-lora": ("{qk_clip: 30}", "    lora: {r: 4}\n",
                          f"{AT.format(line=13)}.qk_clip: expected no `qk_clip` with `lora:` (QK-clip scales the query "
                          "and key weights, which LoRA keeps frozen); found qk_clip: 30 with `lora:`\n  fix: remove "
                          "`qk_clip`, or `lora:` to train every weight"),
    "muon-with-fsdp": ("{kind: muon}", "    distributed: {strategy: fsdp, nproc_per_node: 2}\n",
                       f"{AT.format(line=13)}.kind: expected an optimizer that works on FSDP's sharded parameters: "
                       "Muon orthogonalizes whole matrices, which FSDP splits over the processes; found kind muon with "
                       "`distributed: {strategy: fsdp}`\n  fix: use `strategy: ddp` (every process holds whole "
                       "matrices), or another optimizer kind"),
}


@pytest.mark.parametrize(("optimizer", "extra", "message"), COMPILE_ERRORS.values(), ids=COMPILE_ERRORS.keys())
def test_optimizer_mistakes_are_compile_errors(make_project, optimizer, extra, message):
    p = make_project()
    for rel, text in TINY_SPECS.items():
        p.write(rel, text)
    p.write("data/docs.jsonl", '{"text": "a document"}\n')
    p.write("optim/lion.py", LION)
    assert compile_error(p, optimizer, extra) == message


def test_qk_clip_of_a_plugin_architecture_without_its_targets_is_a_compile_error(make_project):
    """The method is looked for in the class and the base classes its file defines."""
    p = make_project()
    for rel, text in TINY_SPECS.items():
        p.write(rel, text)
    p.write("data/docs.jsonl", '{"text": "a document"}\n')
    p.write("models/net.py", "import torch\n\n\nclass Base(torch.nn.Module):\n    pass\n\n\nclass Net(Base):\n"
                             "    def forward(self, input_ids):\n        return input_ids\n")
    p.write("specs/models/net.yaml", "kind: model\nname: net\narchitecture: module:models/net.py:Net\nhidden_size: 32\n"
                                     "intermediate_size: 64\nlayers: 2\nheads: 4\nvocab_size: 512\n")
    p.write("specs/pipelines/o.yaml", "kind: pipeline\nname: o\nsteps:\n  s:\n    kind: train\n    model: net\n"
                                      "    tokenizer: main.tok\n    data: docs\n    max_steps: 10\n"
                                      "    optimizer: {qk_clip: 30}\n")
    from compiler.errors import SpecError

    with pytest.raises(SpecError) as info:
        graph.plans(project.load(p.root))
    assert str(info.value) == (
        "specs/pipelines/o.yaml:10: steps.s.optimizer.qk_clip: expected a model whose attention QK-clip can reach: of "
        "architecture llama, qwen2 or mistral, or a plug-in whose class defines `qk_clip_targets`; found model 'net' "
        "(specs/models/net.yaml:3) of the plug-in architecture module:models/net.py:Net, whose class defines no "
        "`qk_clip_targets`\n  fix: define `qk_clip_targets()` in class Net of models/net.py (README, Optimizers), or "
        "remove `qk_clip`")
    p.edit("models/net.py", "    pass\n", "    def qk_clip_targets(self):\n        return []\n")
    graph.plans(project.load(p.root))  # in a base class of the same file: found


def test_a_plugin_optimizers_file_is_in_its_steps_key(proj):
    """Its source enters the key of the step that runs it (compiler/graph.py plugin_files)."""
    p = proj
    p.write("specs/pipelines/k.yaml", yaml.safe_dump({"kind": "pipeline", "name": "k", "default": False, "steps": {
        "lion": step(KINDS["lion"]), "adamw": step(KINDS["adamw"])}}, sort_keys=False))

    def keys():
        g = graph.compile_graph(project.load(p.root))
        return g.plans["k.lion"].sources, g.plans["k.adamw"].sources

    lion, adamw = keys()
    assert list(lion) == ["optim/lion.py"] and adamw == {}
    p.write("optim/lion.py", LION + "\n# an edit\n")
    try:
        assert keys()[0] != lion and keys()[1] == adamw
    finally:
        p.write("optim/lion.py", LION)


# ---------------------------------------------------------------- several processes

RESUME_SCRIPT = '''
"""Under torchrun: the Trainer of JOB stopped at step index STOP by a BuildError, then a new one
resumed from its checkpoint (read by rank 0, broadcast into the shards) to the end; rank 0
writes the outputs."""
import json
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[3])
from targets import BuildError, distributed, rank  # noqa: E402
from targets.train import Trainer  # noqa: E402

job = rank.job_from_json(json.loads(Path(sys.argv[1]).read_text()))
parallel = distributed.Parallel.start(job.spec)
real, stop = Trainer.step, int(sys.argv[2])


def stopping(self, i):
    if i == stop:
        raise BuildError("stopped here by the test")
    return real(self, i)


Trainer.step = stopping
first = Trainer(job, parallel)
first.resume()
try:
    first.run()
    raise SystemExit("the run was not stopped")
except BuildError:
    pass
Trainer.step = real
second = Trainer(job, parallel)
second.resume()
assert second.resumed_from == 3, second.resumed_from
second.run()
second.finish()
parallel.close()
'''
PARALLEL = {"muon-ddp": ("ddp", {"kind": "muon", "lr": 0.01, "muon": {"lr": 0.05}, **FILTERED}),
            "adamw-fsdp": ("fsdp", {"lr": 0.01, **FILTERED})}


@pytest.mark.slow  # 2 steps in one process, 2 under torchrun, 2 stopped and resumed under torchrun (~60 s)
def test_muon_and_the_filters_train_in_two_processes_as_in_one_and_resume_there(proj, tmp_path):
    """DDP with Muon, Grokfast and QK-clip; FSDP with AdamW, Grokfast and QK-clip (QK-clip's max
    logits are the largest of every process's, its factors scale FSDP's shards): the losses of
    one process (Muon's within its bfloat16 Newton–Schulz rounding: a few 1e-4), and a run
    stopped under torchrun and resumed there ends with the bytes of an uninterrupted one."""
    import os
    import subprocess
    import sys

    from conftest import REPO
    from test_distributed import job_file

    short = {"max_steps": 6, "eval": {"every": 3, "batches": 1}, "checkpoints": {"every": 3, "keep": 2}}
    steps = {}
    for name, (strategy, o) in PARALLEL.items():
        steps[f"{name}-one"] = step(o, **short)
        steps[name] = step(o, **short, distributed={"strategy": strategy, "nproc_per_node": 2})
    assert build_pipeline(proj, "d", steps) == {f"d.{s}": None for s in steps}
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}
    for name in PARALLEL:
        entry, one = (proj.root / "build" / "d" / s for s in (name, f"{name}-one"))
        tolerance = 1e-3 if name.startswith("muon") else 1e-5
        for a, b in zip(rows(one), rows(entry), strict=True):
            assert abs(a["loss"] - b["loss"]) <= tolerance and a["lr"] == b["lr"], (name, a, b)

        (tmp_path / name).mkdir()
        path, job = job_file(proj, f"d.{name}", tmp_path / name)
        job.out.mkdir()
        ran = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                              str(script), str(path), "4", str(REPO)], env=env, capture_output=True, text=True,
                             timeout=300)
        assert ran.returncode == 0, ran.stderr[-4000:]
        assert measured(job.out) == measured(entry)
        assert (job.out / "model.safetensors").read_bytes() == (entry / "model.safetensors").read_bytes()
        for f in ("optimizer.safetensors", "model.safetensors"):
            last = [run / "checkpoints" / "step-000006" / f for run in (job.out, entry)]
            assert last[0].read_bytes() == last[1].read_bytes(), (name, f)
