"""TRM: a small recurrent-depth transformer with adaptive computation time and a long-term memory.

An Ingot plug-in architecture (`architecture: module:models/trm.py:TRM` in a model manifest; the
interface is in targets/architectures.py). It imports torch only.

The computation, for B sequences of L tokens and a residual width d (`hidden_size`):

    ids ─ embed ─ prelude (P blocks) ─ e ─────────────┬────────────────────────┐
                                                       │ memory writes           │ e re-injected
                                                       ▼ (chunk by chunk)        ▼ at every step
                                          M_0 → M_1 → … → M_{K-1}     h_n = core(inject([norm(s_{n-1}); e]), M)
                                                                      n = 1 … N(t) <= max_steps
    logits ─ head ─ norm ─ coda (C blocks) ─ y = Σ_n w_n(t) h_n

Blocks are pre-norm decoder blocks: RMSNorm, causal grouped-query self-attention with RoPE, RMSNorm,
SwiGLU. The prelude and the coda run once; the core (`layers` blocks) is one shared set of weights
applied again and again, so depth is bought with compute, not parameters (the recurrent-depth idea
of the Universal Transformer, and of recent "latent reasoning" models). Every step sees the prelude's
output `e` again, mixed with the state by a linear `inject` of [norm(s); e], so a long recurrence
cannot wash the input out.

Adaptive computation time (Graves, 2016; per position, as the Universal Transformer does). After each
step n a halting unit gives every still-running position p_n = σ(w·h_n + b). A position halts at the
first step N where p_1 + … + p_N reaches `halt_threshold` (1 - ε), or at `max_steps`. Its output is
y = Σ_{n<N} p_n h_n + R h_N, with the remainder R = 1 - Σ_{n<N} p_n, so the weights sum to one. Once
halted, a position's state stays as it was: it goes on serving as context to the positions still
running, and its output no longer changes. The ponder cost ρ = N + R is what the model pays for
thinking: `ponder_weight` · mean ρ is returned as `aux_loss` and added to the training loss. N is a
step count and has no gradient; R does (through the p_n before N), and lowering it means halting
sooner: that is the remainder trick. The loop ends once every position has halted.

Long-term memory. `memory_slots` slots of width d, learned (M_0, the memory a sequence starts with:
what training stored across all sequences), then rewritten as the sequence goes, one chunk of
`memory_chunk` positions at a time. Writing chunk k: the slots attend over the chunk's prelude
outputs (queries from the slots, keys and values from the tokens), and a gate per slot and channel
decides how much of that read replaces the slot: M_{k+1} = g ⊙ M_k + (1 - g) ⊙ u, g = σ(W[M_k; u] + b).
Reading, at every core step: each position of chunk k attends over the slots of M_k (which hold chunks
0 … k-1 only), and a gate per position, σ(w·norm(h) + b), scales what the read adds to its state.
So the memory is causal by construction: nothing a position reads was written from itself or a later
position (the chunk being read is never in the memory it reads). It carries a compressed summary of
the past in a fixed size, beside attention's exact but costly view of it.

Metrics (`metrics` of each forward, averaged into the train step's log):
* `halting_steps`: the mean number of core steps N over all positions (1 … max_steps);
* `memory_usage`: how many slots the reads spread over, as a share of the slots: the exponential of
  the entropy of the mean read distribution over slots (of every running position and step), divided
  by `memory_slots`; 1 when the reads use all slots alike, 1 / memory_slots when they all go to one;
* `memory_gate`: the mean read gate (how much of its read a position lets in), 0 … 1.
With `memory_slots: 0` there is no memory, and neither memory metric.

Beside the interface's three methods, TRM gives FSDP its prelude and coda blocks to shard (`blocks`;
the core's run at every step and stay with the root's unit, gathered once per forward), and QK-clip
its attention layers (`qk_clip_targets`: once asked, each training forward also records every head's
largest logit).

Options (a model manifest's `options:`; each has the default shown in OPTIONS): `prelude_layers`,
`coda_layers`, `max_steps`, `halt_threshold`, `ponder_weight`, `memory_slots`, `memory_chunk`,
`init_std` (the standard deviation every matrix, embedding and slot is drawn with; norms start at
one, biases at zero). An unknown option is refused by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

OPTIONS = {"prelude_layers": 1, "coda_layers": 1, "max_steps": 4, "halt_threshold": 0.99, "ponder_weight": 0.01,
           "memory_slots": 16, "memory_chunk": 16, "init_std": 0.02}
# option -> (lowest value, whether the lowest is allowed, integer?)
BOUNDS = {"prelude_layers": (0, True, True), "coda_layers": (0, True, True), "max_steps": (1, True, True),
          "halt_threshold": (0.0, False, False), "ponder_weight": (0.0, True, False), "memory_slots": (0, True, True),
          "memory_chunk": (1, True, True), "init_std": (0.0, False, False)}


@dataclass
class TRMOutput:
    logits: torch.Tensor     # batch × sequence × vocabulary
    aux_loss: torch.Tensor   # ponder_weight · mean(N + R)
    metrics: dict            # name -> scalar tensor (detached)


def settings(config: dict) -> dict:
    """The base fields TRM uses and its options (defaults filled in), checked."""
    options = dict(config.get("options") or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"TRM has no option {', '.join(map(repr, unknown))}; its options are {', '.join(OPTIONS)}")
    out = {**OPTIONS, **options}
    for name, (low, inclusive, integer) in BOUNDS.items():
        value = out[name]
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise ValueError(f"TRM option {name} must be {'an integer' if integer else 'a number'}, not {value!r}")
        if value < low or (value == low and not inclusive):
            raise ValueError(f"TRM option {name} must be {'at least' if inclusive else 'above'} {low}, not {value}")
    if out["halt_threshold"] > 1:
        raise ValueError(f"TRM option halt_threshold must be at most 1, not {out['halt_threshold']}")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "layers", "heads", "kv_heads", "head_dim",
                 "max_positions", "rope_theta", "rms_norm_eps", "tie_embeddings"):
        out[name] = config[name]
    if out["head_dim"] % 2:
        raise ValueError(f"TRM rotates pairs of channels (RoPE): head_dim must be even, not {out['head_dim']}")
    if out["heads"] % out["kv_heads"]:
        raise ValueError(f"TRM needs kv_heads ({out['kv_heads']}) to divide heads ({out['heads']})")
    return out


# ---------------------------------------------------------------- parts

class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate(x, cos, sin):
    """RoPE on the last dimension: its two halves as the real and imaginary parts of a rotation."""
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-b, a], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, s: dict):
        super().__init__()
        d, self.heads, self.kv_heads, self.head_dim = s["hidden_size"], s["heads"], s["kv_heads"], s["head_dim"]
        self.q = nn.Linear(d, self.heads * self.head_dim, bias=False)
        self.k = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.v = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.o = nn.Linear(self.heads * self.head_dim, d, bias=False)
        self.track, self.best = False, None  # QK-clip's record: see `max_logits`

    def forward(self, x, cos, sin):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        if self.track and self.training:
            self._record(q, k)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))

    @torch.no_grad()
    def _record(self, q, k):
        """The largest pre-softmax logit q·kᵀ/√head_dim of each head over the positions it attends."""
        n = q.shape[2]
        logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        top = logits.masked_fill(~causal, float("-inf")).amax(dim=(0, 2, 3))
        self.best = top if self.best is None else torch.maximum(self.best, top)

    def max_logits(self):
        """Each head's largest logit over the training forward passes since the last call (None if none)."""
        best, self.best = self.best, None
        return best


class Block(nn.Module):
    """Pre-norm decoder block: causal self-attention, then SwiGLU, each added to the residual."""

    def __init__(self, s: dict):
        super().__init__()
        d, f, eps = s["hidden_size"], s["intermediate_size"], s["rms_norm_eps"]
        self.attn_norm, self.attn = RMSNorm(d, eps), Attention(s)
        self.mlp_norm = RMSNorm(d, eps)
        self.gate, self.up, self.down = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False), nn.Linear(f, d, bias=False)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))

    @staticmethod
    def count(s: dict) -> int:
        d, hd = s["hidden_size"], s["head_dim"]
        return 2 * d + d * hd * (2 * s["heads"] + 2 * s["kv_heads"]) + 3 * d * s["intermediate_size"]


class Memory(nn.Module):
    """Learned slots, rewritten chunk by chunk from the past and read by every core step (see the
    module's doc)."""

    def __init__(self, s: dict):
        super().__init__()
        d, eps = s["hidden_size"], s["rms_norm_eps"]
        self.chunk, self.scale = s["memory_chunk"], 1 / math.sqrt(d)
        self.slots = nn.Parameter(torch.empty(s["memory_slots"], d))
        self.write_norm = RMSNorm(d, eps)
        self.write_q, self.write_k, self.write_v = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.write_gate = nn.Linear(2 * d, d)
        self.memory_norm, self.read_norm = RMSNorm(d, eps), RMSNorm(d, eps)
        self.read_q, self.read_k, self.read_v, self.read_o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.read_gate = nn.Linear(d, 1)

    @staticmethod
    def count(s: dict) -> int:
        d, slots = s["hidden_size"], s["memory_slots"]
        if slots == 0:
            return 0
        write = d + 3 * d * d + (2 * d * d + d)   # write_norm; write_q, k, v; write_gate
        read = 2 * d + 4 * d * d + (d + 1)         # memory_norm, read_norm; read_q, k, v, o; read_gate
        return slots * d + write + read

    def states(self, e):
        """The read keys and values of the memory each chunk reads, each [batch, chunks, slots, d]:
        of M_0 (the learned slots) for chunk 0, of M_k (written from chunks 0 … k-1) for chunk k."""
        b, n, d = e.shape
        chunks = -(-n // self.chunk)
        m = self.slots.expand(b, -1, -1)
        h = self.write_norm(e)
        keys, values = self.write_k(h), self.write_v(h)
        out = [m]
        for c in range(chunks - 1):  # the last chunk is written to no one's memory
            part = slice(c * self.chunk, (c + 1) * self.chunk)
            weights = torch.softmax(self.write_q(m) @ keys[:, part].transpose(1, 2) * self.scale, dim=-1)
            u = weights @ values[:, part]
            g = torch.sigmoid(self.write_gate(torch.cat([m, u], dim=-1)))
            m = g * m + (1 - g) * u
            out.append(m)
        states = torch.stack(out, dim=1)
        normed = self.memory_norm(states)
        return self.read_k(normed), self.read_v(normed)

    def read(self, h, keys, values):
        """What each position adds from the memory of its chunk, its read distribution over the slots
        [batch, positions, slots] and its gate [batch, positions, 1]."""
        b, n, d = h.shape
        chunks = keys.shape[1]
        x = self.read_norm(h)
        q = F.pad(self.read_q(x), (0, 0, 0, chunks * self.chunk - n)).view(b, chunks, self.chunk, d)
        weights = torch.softmax(torch.einsum("bkcd,bksd->bkcs", q, keys) * self.scale, dim=-1)
        read = torch.einsum("bkcs,bksd->bkcd", weights, values).reshape(b, chunks * self.chunk, d)[:, :n]
        gate = torch.sigmoid(self.read_gate(x))
        return gate * self.read_o(read), weights.reshape(b, chunks * self.chunk, -1)[:, :n], gate


# ---------------------------------------------------------------- the model

class TRM(nn.Module):
    def __init__(self, s: dict):
        super().__init__()
        d, eps = s["hidden_size"], s["rms_norm_eps"]
        self.s = dict(s)
        self.embed = nn.Embedding(s["vocab_size"], d)
        self.prelude = nn.ModuleList(Block(s) for _ in range(s["prelude_layers"]))
        self.core = nn.ModuleList(Block(s) for _ in range(s["layers"]))
        self.coda = nn.ModuleList(Block(s) for _ in range(s["coda_layers"]))
        self.state_norm = RMSNorm(d, eps)
        self.inject = nn.Linear(2 * d, d, bias=False)
        self.halt = nn.Linear(d, 1)
        self.memory = Memory(s) if s["memory_slots"] else None
        self.norm = RMSNorm(d, eps)
        self.head = None if s["tie_embeddings"] else nn.Linear(d, s["vocab_size"], bias=False)
        self._initialize(s["init_std"])

    # ------------------------------------------------------------ the plug-in interface

    @classmethod
    def from_config(cls, config: dict) -> "TRM":
        return cls(settings(config))

    @classmethod
    def parameter_count(cls, config: dict) -> int:
        s = settings(config)
        d, vocab = s["hidden_size"], s["vocab_size"]
        blocks = (s["prelude_layers"] + s["layers"] + s["coda_layers"]) * Block.count(s)
        recurrence = d + 2 * d * d + (d + 1)  # state_norm; inject; halt
        head = 0 if s["tie_embeddings"] else vocab * d
        return vocab * d + blocks + recurrence + Memory.count(s) + d + head

    def blocks(self) -> list[nn.Module]:
        """What FSDP may shard one by one: the blocks that run once per forward. The core's blocks
        run at every step, and stay with the root's unit."""
        return [*self.prelude, *self.coda]

    def qk_clip_targets(self) -> list[tuple]:
        """For QK-clip (`optimizer.qk_clip`): each attention's query and key weights (rows in blocks
        per head), its heads, and its `max_logits`. Asking starts the recording: from now on each
        training forward computes every head's logits once more (q·kᵀ over the positions attended)."""
        out = []
        for block in (*self.prelude, *self.core, *self.coda):
            block.attn.track = True
            out.append(((block.attn.q.weight,), (block.attn.k.weight,), block.attn.heads, block.attn.max_logits))
        return out

    def forward(self, input_ids) -> TRMOutput:
        s = self.s
        b, n = input_ids.shape
        if n > s["max_positions"]:
            raise ValueError(f"TRM is built for {s['max_positions']} positions, not {n}")
        cos, sin = self._rope(n, input_ids.device)
        e = self.embed(input_ids)
        for block in self.prelude:
            e = block(e, cos, sin)
        memory = self.memory.states(e) if self.memory is not None else None
        y, ponder, steps, reads = self._recur(e, memory, cos, sin)
        x = y
        for block in self.coda:
            x = block(x, cos, sin)
        x = self.norm(x)
        logits = self.head(x) if self.head is not None else x @ self.embed.weight.t()
        metrics = {"halting_steps": steps.mean().detach()}
        if memory is not None:
            usage, gate, count = reads
            share = usage / usage.sum()
            entropy = -(share * torch.log(share.clamp_min(1e-12))).sum()
            metrics.update(memory_usage=(torch.exp(entropy) / s["memory_slots"]).detach(),
                           memory_gate=(gate / count).detach())
        return TRMOutput(logits, s["ponder_weight"] * ponder.mean(), metrics)

    # ------------------------------------------------------------ internals

    def _recur(self, e, memory, cos, sin):
        """The ACT loop: (y, N + R per position, N per position, (read mass per slot, gate sum, reads))."""
        s = self.s
        b, n, d = e.shape
        state, y = e, torch.zeros_like(e)
        running = torch.ones(b, n, dtype=torch.bool, device=e.device)
        before = e.new_zeros(b, n)         # Σ p over the steps before the current one, while running
        remainder = e.new_zeros(b, n)
        steps = e.new_zeros(b, n)
        usage = e.new_zeros(s["memory_slots"]) if memory is not None else None
        gate_sum, count = e.new_zeros(()), e.new_zeros(())
        for step in range(1, s["max_steps"] + 1):
            h = self.inject(torch.cat([self.state_norm(state), e], dim=-1))
            if memory is not None:
                added, weights, gate = self.memory.read(h, *memory)
                h = h + added
                live = running.to(weights.dtype)
                usage = usage + (weights * live[..., None]).sum((0, 1)).detach()
                gate_sum = gate_sum + (gate[..., 0] * live).sum().detach()
                count = count + live.sum()
            for block in self.core:
                h = block(h, cos, sin)
            p = torch.sigmoid(self.halt(h))[..., 0]
            stop = running & ((before + p >= s["halt_threshold"]) | (step == s["max_steps"]))
            go_on = running & ~stop
            weight = torch.where(stop, 1 - before, torch.where(go_on, p, torch.zeros_like(p)))
            y = y + weight[..., None] * h
            remainder = torch.where(stop, 1 - before, remainder)
            steps = steps + running.to(steps.dtype)
            before = before + torch.where(go_on, p, torch.zeros_like(p))
            state = torch.where(running[..., None], h, state)  # a halted position's state stays
            running = go_on
            if not bool(running.any()):
                break
        return y, steps + remainder, steps, (usage, gate_sum, count)

    def _rope(self, n: int, device):
        hd = self.s["head_dim"]
        inv = 1.0 / (self.s["rope_theta"] ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
        angles = torch.outer(torch.arange(n, device=device, dtype=torch.float32), inv)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def _initialize(self, std: float) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        if self.memory is not None:
            nn.init.normal_(self.memory.slots, 0.0, std)
