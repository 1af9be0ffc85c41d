"""Optimizers of the train builder: AdamW, Muon (with AdamW for what is not a hidden matrix), SGD or
a plug-in class, and on top of any of them Grokfast's gradient filter and QK-clip.

Reads: the step's `optimizer` spec, the model, and for a plug-in (`kind: module:PATH:CLASS`) its
file in the project. Writes nothing itself: its whole state, Grokfast's slow gradients included,
goes through `Optimizers.state_dict()` into every checkpoint (targets/trainloop.py flattens it
into safetensors), so a resumed run steps on exactly as an uninterrupted one.

`build` gives the trainer one `Optimizers`: the torch optimizers over disjoint parameter groups
(for `muon` PyTorch's Muon over the hidden layers' matrices and AdamW over the rest; one optimizer
for the other kinds), stepped together, saved and restored as one state dict in torch's own
layout (parameters numbered across every group in order), and iterable, so that
torch.distributed.checkpoint gathers and scatters each one's state under DDP or FSDP.

Every group carries `initial_lr`, its peak learning rate: the trainer's schedule scales each
group's own (`optimizer.lr` for AdamW's, SGD's and a plug-in's groups, `optimizer.muon.lr` for
Muon's).

A plug-in optimizer is a `torch.optim.Optimizer` subclass, constructed as
`CLASS(param_groups, lr=optimizer.lr, **optimizer.options)` with two groups (the matrices, with
`weight_decay: optimizer.weight_decay`, and the rest with 0), whose `state_dict()` holds
tensors, numbers, booleans, strings and lists of them (what a checkpoint can hold).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from targets import BuildError, plugins

EMA = "grokfast_ema"  # the key of Grokfast's slow gradient h in a parameter's optimizer state
HF_ATTENTION = ("llama", "qwen2", "mistral")  # model types whose attention layers QK-clip knows
QUERY_CHUNK = 1 << 24  # logits computed at once by QK-clip's record (64 MiB of float32)


def make(model, o, root: Path) -> "Optimizers":
    """The optimizer of spec `o` (a step's `optimizer`) over the trainable parameters of `model`
    (plain, or wrapped by DDP or sharded by FSDP in place)."""
    import torch

    plain = _plain(model)
    if o.kind == "adamw":
        parts = [adamw(model, o)]
    elif o.kind == "muon":
        parts = _muon(plain, o)
    elif o.kind == "sgd":
        parts = [torch.optim.SGD(_groups(plain, o.weight_decay), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)]
    else:
        parts = [_plugin(plain, o, root)]
    for part in parts:
        for group in part.param_groups:
            group["initial_lr"] = group["lr"]
    grokfast = (o.grokfast.alpha, o.grokfast.lambda_) if o.grokfast is not None else None
    return Optimizers(parts, grokfast, QKClip(plain, o.qk_clip) if o.qk_clip is not None else None)


def adamw(model, o):
    """AdamW over the trainable parameters (every one, or LoRA's adapters), with weight decay on
    the matrices only: not on norms, and not on the embedding. A group left empty is left out."""
    import torch

    return torch.optim.AdamW(_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps)


def _groups(model, weight_decay: float, skip: frozenset = frozenset()) -> list[dict]:
    """The trainable parameters not in `skip` (ids) as two groups: the matrices, decayed, and the
    rest (norms, biases, embeddings: an `nn.Embedding`'s weight, or one named embed_tokens)."""
    import torch

    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, other = [], []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in skip:
            matrix = p.ndim >= 2 and "embed_tokens" not in name and id(p) not in embeddings
            (decay if matrix else other).append(p)
    return [{"params": params, "weight_decay": wd} for params, wd in ((decay, weight_decay), (other, 0.0)) if params]


def _muon(model, o) -> list:
    """Muon over the weights of the linear maps inside the network (not the LM head), AdamW over
    everything else."""
    import torch

    head = _output_layer(model)
    matrices = [m.weight for m in model.modules()
                if isinstance(m, torch.nn.Linear) and m is not head and m.weight.requires_grad]
    s = o.muon
    rest = _groups(model, o.weight_decay, frozenset(map(id, matrices)))
    parts = [torch.optim.Muon(matrices, lr=s.lr, weight_decay=s.weight_decay, momentum=s.momentum,
                              nesterov=s.nesterov, ns_steps=s.ns_steps, adjust_lr_fn=s.adjust_lr)] if matrices else []
    return parts + ([torch.optim.AdamW(rest, lr=o.lr, betas=o.betas, eps=o.eps)] if rest else [])


def _output_layer(model):
    """The LM head: what `get_output_embeddings()` gives (transformers' models), else a top-level
    module named lm_head or head (a plug-in's); None if none."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if head is not None else getattr(model, "lm_head", None) or getattr(model, "head", None)


def _plugin(model, o, root: Path):
    import torch

    what = f"optimizer.kind {o.kind}"
    cls = plugins.load(root, o.kind, what)
    name = o.kind.rsplit(":", 1)[1]
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise BuildError(f"{what}: {name} is not a torch.optim.Optimizer subclass: derive it from "
                         "torch.optim.Optimizer (README, Optimizers)")
    try:
        return cls(_groups(model, o.weight_decay), lr=o.lr, **o.options)
    except (TypeError, ValueError) as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in o.options.items())
        raise BuildError(f"{what}: {name}(param_groups, lr={o.lr!r}{', ' + given if given else ''}) failed: "
                         f"{type(exc).__name__}: {exc}; fix optimizer.options or the class") from exc


def _plain(model):
    """The module under DDP's wrapper (FSDP shards in place)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


class Optimizers:
    """The optimizer a train step steps: torch optimizers over disjoint parameter groups, seen as
    one, with Grokfast's filter (`filter_gradients`, before clipping) and QK-clip (`clip_qk`, after
    the step) when the spec asks for them."""

    def __init__(self, parts: list, grokfast: tuple[float, float] | None = None, qk: "QKClip | None" = None):
        self.parts, self.grokfast, self.qk = list(parts), grokfast, qk
        self.stepping = False
        if grokfast is not None:
            for part in self.parts:
                part.register_step_post_hook(self._lay_out_h)

    def __iter__(self):  # torch.distributed.checkpoint's state-dict helpers take several optimizers
        return iter(self.parts)

    @property
    def param_groups(self) -> list[dict]:
        return [g for part in self.parts for g in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        """One step of every part; `closure` (torch's convention: it recomputes the loss and its
        gradients) is called once, before, and its loss returned."""
        import torch

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # each optimizer sees its own state only: AdamW starts a parameter's state when it finds
        # it empty, and Grokfast's h is there before AdamW's first step
        held = [(s, s.pop(EMA)) for part in self.parts for s in part.state.values() if EMA in s]
        self.stepping = True
        try:
            for part in self.parts:
                part.step()
        finally:
            self.stepping = False
            for s, h in held:
                s[EMA] = h
        return loss

    def _lay_out_h(self, part, args, kwargs) -> None:
        """After a step of one part alone: torch.distributed.checkpoint takes one, with zero gradients,
        to lay out the state it loads into, and on processes other than rank 0 loads only what that
        step laid out; so h gets a place there too (zeros, which the load overwrites)."""
        if self.stepping:
            return
        import torch

        for group in part.param_groups:
            for p in group["params"]:
                if p.grad is not None and EMA not in part.state[p]:
                    part.state[p][EMA] = torch.zeros_like(p)

    def state_dict(self) -> dict:
        """torch's layout over all the parts: parameters numbered across every group in order."""
        state, groups, offset = {}, [], 0
        for part in self.parts:
            sd = part.state_dict()
            state.update({i + offset: s for i, s in sd["state"].items()})
            groups += [{**g, "params": [i + offset for i in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Each part's groups and state out of `state_dict` (as `state_dict` laid them out)."""
        groups, first, offset = state_dict["param_groups"], 0, 0
        for part in self.parts:
            mine = groups[first:first + len(part.param_groups)]
            ids = {i for g in mine for i in g["params"]}
            part.load_state_dict({"state": {i - offset: s for i, s in state_dict["state"].items() if i in ids},
                                  "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in mine]})
            first += len(part.param_groups)
            offset += sum(len(g["params"]) for g in part.param_groups)

    def filter_gradients(self) -> None:
        """Grokfast: h ← α·h + (1 − α)·g, then g ← g + λ·h, for every parameter with a gradient;
        h starts as the first gradient (as in the paper's code) and lives in the optimizer state."""
        if self.grokfast is None:
            return
        import torch

        alpha, lam = self.grokfast
        grads, old, new = [], [], []
        for part in self.parts:
            for group in part.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = part.state[p]
                    grads.append(p.grad)
                    if EMA in state:
                        old.append((p.grad, state[EMA]))
                    else:
                        state[EMA] = p.grad.detach().clone()
                    new.append(state[EMA])
        with torch.no_grad():
            if old:
                g, h = (list(t) for t in zip(*old))
                torch._foreach_mul_(h, alpha)
                torch._foreach_add_(h, g, alpha=1 - alpha)
            if grads:
                torch._foreach_add_(grads, new, alpha=lam)

    def clip_qk(self) -> None:
        """QK-clip after an optimizer step, when the spec asks for it."""
        if self.qk is not None:
            self.qk.apply()


# ---------------------------------------------------------------- QK-clip

@dataclass
class QKTarget:
    """One attention layer as QK-clip sees it: the tensors whose rows make its queries (weight,
    and bias if any: `heads` equal blocks of rows) and its keys (`kv_heads` blocks), and a
    function giving the largest pre-softmax logit of each query head (float32, [heads]) over the
    training forward passes since its last call, or None when there were none."""

    q: tuple
    k: tuple
    heads: int
    kv_heads: int
    max_logits: Callable


class QKClip:
    """MuonClip's QK-clip at threshold `tau`: after an optimizer step, the query and key rows of
    each head whose largest logit in the step's forward passes exceeded tau are scaled down so
    that logit would be tau. For llama, qwen2 and mistral models their attention layers are
    recorded by hooks; a plug-in architecture gives its own through `qk_clip_targets()`."""

    def __init__(self, model, tau: float):
        self.tau = tau
        self.targets = _hf_targets(model) if _model_type(model) in HF_ATTENTION else _plugin_targets(model)

    def apply(self) -> None:
        import torch
        import torch.distributed as dist

        found = [(t, t.max_logits()) for t in self.targets]
        found = [(t, m) for t, m in found if m is not None]
        if not found:
            return
        maxima = torch.cat([m.float() for _, m in found])
        if dist.is_available() and dist.is_initialized():  # the largest of every process's forward passes
            dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
        with torch.no_grad():
            for (t, _), m in zip(found, maxima.split([t.heads for t, _ in found])):
                q, k = clip_factors(m, self.tau, t.kv_heads)
                if bool((q != 1).any()) or bool((k != 1).any()):
                    for w in t.q:
                        _scale_rows(w, q)
                    for w in t.k:
                        _scale_rows(w, k)


def clip_factors(max_logits, tau: float, kv_heads: int):
    """(query factors [heads], key factors [kv_heads]) for heads whose max logits are `max_logits`:
    each head's product is γ = τ / max where max > τ, else 1. A key head takes the square root of the
    mildest γ of the query heads that share it (each of its own with MHA), its query heads the rest
    of their own, so a head under τ keeps its rows and no factor exceeds 1."""
    import torch

    gamma = torch.where(max_logits > tau, tau / max_logits, torch.ones_like(max_logits))
    k = gamma.view(kv_heads, -1).amax(dim=1).sqrt()
    return gamma / k.repeat_interleave(gamma.numel() // kv_heads), k


def _scale_rows(w, factors) -> None:
    """Scale the `len(factors)` equal blocks of rows of `w` (a weight or a bias) in place."""
    rows = factors.repeat_interleave(w.shape[0] // factors.numel()).view(-1, *[1] * (w.ndim - 1))
    if hasattr(w, "device_mesh"):  # an FSDP shard (a DTensor): the same factors on every process
        from torch.distributed.tensor import DTensor, Replicate

        local = w.to_local()
        rows = DTensor.from_local(rows.to(local.device, local.dtype), w.device_mesh,
                                  [Replicate()] * w.device_mesh.ndim, run_check=False)
    else:
        rows = rows.to(w.device, w.dtype)
    w.mul_(rows)


def _model_type(model) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _hf_targets(model) -> list[QKTarget]:
    return [_Attention(m).target() for m in model.modules()
            if hasattr(m, "q_proj") and hasattr(m, "k_proj") and hasattr(m, "head_dim")]


def _plugin_targets(model) -> list[QKTarget]:
    get = getattr(model, "qk_clip_targets", None)
    if not callable(get):
        raise BuildError(f"optimizer.qk_clip scales the query and key weights of attention heads, and model class "
                         f"{type(model).__name__} does not say where they are: define `qk_clip_targets()` in it "
                         "(README, Optimizers), or remove qk_clip")
    out = []
    for n, item in enumerate(get()):
        if isinstance(item, QKTarget):
            out.append(item)
            continue
        try:
            q, k, heads, max_logits = item
        except (TypeError, ValueError):
            raise BuildError(f"{type(model).__name__}.qk_clip_targets() item {n} is not (q, k, heads, max_logits): "
                             f"found {type(item).__name__}") from None
        q, k = (t if isinstance(t, (tuple, list)) else (t,) for t in (q, k))
        per_head = q[0].shape[0] // heads
        if per_head * heads != q[0].shape[0] or k[0].shape[0] % per_head:
            raise BuildError(f"{type(model).__name__}.qk_clip_targets() item {n}: {q[0].shape[0]} query rows do not "
                             f"split into {heads} heads with key rows ({k[0].shape[0]}) of whole heads")
        out.append(QKTarget(tuple(q), tuple(k), heads, k[0].shape[0] // per_head, max_logits))
    return out


class _Attention:
    """One attention layer of a transformers llama, qwen2 or mistral model, recorded by hooks: its
    q_proj and k_proj outputs, rotated with the position embeddings (cos, sin) the layer is called
    with by the model file's own `apply_rotary_pos_emb`, are the q and k its attention uses;
    their logits q·kᵀ·scaling over the positions the mask keeps (causal, and a sliding window
    where the layer has one) give each head's max. Training forward passes only (not evaluation,
    where the module is in eval mode)."""

    def __init__(self, attn):
        self.attn, config = attn, attn.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        # qwen2 keeps a layer's window on the layer (None unless it slides); mistral on the config
        self.window = attn.sliding_window if hasattr(attn, "sliding_window") else getattr(config, "sliding_window", None)
        self.best = None   # float32 [heads]: the max since the last call of `max_logits`
        self.seen: dict = {}
        attn.register_forward_pre_hook(self._called, with_kwargs=True)
        attn.q_proj.register_forward_hook(self._projected("q"))
        attn.k_proj.register_forward_hook(self._projected("k"))
        attn.register_forward_hook(self._record)

    def target(self) -> QKTarget:
        def rows(linear):
            return (linear.weight,) + ((linear.bias,) if linear.bias is not None else ())

        return QKTarget(rows(self.attn.q_proj), rows(self.attn.k_proj), self.heads, self.kv_heads, self.max_logits)

    def max_logits(self):
        best, self.best = self.best, None
        return best

    def _called(self, module, args, kwargs):
        if module.training:
            self.seen = {"rope": kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)}

    def _projected(self, name: str):
        def hook(module, args, output):
            if self.attn.training:
                self.seen[name] = output.detach()
        return hook

    def _record(self, module, args, output):
        seen, self.seen = self.seen, {}
        if not module.training or seen.get("rope") is None:
            return
        m = self.logits_max(seen["q"], seen["k"], *seen["rope"])
        self.best = m if self.best is None else self.best.maximum(m)

    def logits_max(self, q_out, k_out, cos, sin):
        """Per query head, the max of q·kᵀ·scaling (float32) over the batch and every kept position."""
        import torch

        d = self.attn.head_dim
        b, s = q_out.shape[:2]
        q = q_out.view(b, s, -1, d).transpose(1, 2)
        k = k_out.view(b, s, -1, d).transpose(1, 2)
        q, k = self.rope(q, k, cos, sin)
        group = self.heads // self.kv_heads
        q = q.float().reshape(b, self.kv_heads, group, s, d)
        k = k.float().unsqueeze(2)  # [b, kv_heads, 1, s, d]: a key head serves its `group` query heads
        best = torch.full((self.heads,), float("-inf"), device=q.device)
        rows = max(1, QUERY_CHUNK // max(1, b * self.heads * s))
        cols = torch.arange(s, device=q.device)
        with torch.no_grad():
            for start in range(0, s, rows):
                at = torch.arange(start, min(s, start + rows), device=q.device)[:, None]
                hidden = cols[None, :] > at
                if self.window is not None:
                    hidden |= cols[None, :] <= at - self.window
                logits = (q[..., start:start + rows, :] @ k.transpose(-1, -2)) * self.attn.scaling
                chunk = logits.masked_fill(hidden, float("-inf")).amax(dim=(0, 3, 4)).reshape(self.heads)
                best = torch.maximum(best, chunk)
        return best
