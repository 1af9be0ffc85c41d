"""A train step in several processes: PyTorch's torchrun launches them, DDP or FSDP2 trains.

With `distributed: {strategy, nproc_per_node, nnodes}` the train builder does not train in the
`doit` process: `launch` writes the job (spec, inputs, folders) as JSON into the step's work
folder and runs `python -m torch.distributed.run ... -m targets.rank JOB` (rendezvous on
loopback for one node; `MASTER_ADDR`, `MASTER_PORT` and `NODE_RANK` from the environment for
several). Each process (targets/rank.py) builds the same Trainer as a one-process step, with a
`Parallel` that:

* splits every micro-batch of `batch_size` sequences into equal shares, one per process, each
  reading only its own windows (the draws are made for the whole batch, so the global batch
  is the one a single process reads);
* wraps the model in `DistributedDataParallel` (`ddp`), or shards it with `fully_shard` per
  decoder layer and as a whole (`fsdp`), and syncs gradients on the last micro-batch only;
* scales the loss so that the averaged gradient is the global batch's: a share's mean for
  pretraining and distillation (every share counts the same tokens), its response-token sum
  times the world size over the global count for `sft`; and sums the logged losses over the
  processes;
* saves checkpoints in the one-process layout, written by rank 0 from full state dicts
  gathered to it (`torch.distributed.checkpoint.state_dict`, full_state_dict, CPU offload: no
  process but rank 0 holds the whole model), the optimizer state keyed by parameter name; a
  resume reads them on rank 0 and broadcasts them to the shards;
* at the end gathers the full state on rank 0, which loads it into a plain model built as a
  one-process step builds it and writes the outputs (and `result.json`, the metrics, for the
  launcher) from it.

Gloo on the CPU (with one thread for its collectives), NCCL on CUDA (one GPU per process,
`LOCAL_RANK`). A process that dies takes torchrun and the others down; the step fails, nothing
reaches the store, and the checkpoints in the work folder stay for the next attempt, which
resumes from the newest.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from targets import BuildError, Job, architectures

JOB_FILE = "job.json"
RESULT_FILE = "result.json"  # rank 0's metrics, or {"error": message} for a BuildError
FOLDER = "distributed"       # under the step's work folder


# ---------------------------------------------------------------- the launcher, in the doit process

def launch(job: Job) -> dict:
    """Train the step under torchrun; the metrics rank 0 returns."""
    d = job.spec.distributed
    _check_devices(job.spec.device, d.nproc_per_node)
    folder = Path(job.work) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULT_FILE).unlink(missing_ok=True)
    (folder / JOB_FILE).write_text(json.dumps(job_to_json(job), indent=1) + "\n")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={d.nproc_per_node}",
               f"--nnodes={d.nnodes}", "--max-restarts=0", *_rendezvous(d.nnodes),
               "-m", "targets.rank", str(folder / JOB_FILE)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1])]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    job.log(f"{d.strategy} over {d.world()} processes ({d.nproc_per_node} per node × {d.nnodes} "
            f"node{'s' if d.nnodes > 1 else ''}) under torchrun")
    returncode = subprocess.run(command, env=env, stdin=subprocess.DEVNULL).returncode
    result = _read_result(folder / RESULT_FILE)
    if result is not None and "error" in result:
        raise BuildError(result["error"])
    if returncode != 0 or result is None:
        node = int(os.environ.get("NODE_RANK", "0"))
        if returncode == 0 and node != 0:
            raise BuildError(f"this machine (NODE_RANK={node}) trained its share; node 0 writes the entry and "
                             "keeps it: build there, or pull it from the remote cache")
        raise BuildError(f"torchrun exited with status {returncode}: a training process failed (its output is "
                         "above); the checkpoints in the step's work folder are kept, and the next build resumes "
                         "from the newest")
    return result


def _check_devices(choice: str, nproc: int) -> None:
    """One process per GPU on CUDA, per core on the CPU; checked before anything starts."""
    import torch

    cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    if cuda:
        count = torch.cuda.device_count()
        if count == 0:
            raise BuildError("device cuda was asked for, but torch sees no CUDA device: use device auto or cpu")
        if nproc > count:
            raise BuildError(f"distributed.nproc_per_node is {nproc}, and this machine has {count} CUDA "
                             f"device{'s' if count > 1 else ''}: one process per GPU, so use at most {count}")
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if nproc > cores:
        raise BuildError(f"distributed.nproc_per_node is {nproc}, and this machine has {cores} CPU core"
                         f"{'s' if cores > 1 else ''} for gloo processes on the CPU: use at most {cores}")


def _rendezvous(nnodes: int) -> list[str]:
    if nnodes == 1:
        return ["--standalone"]  # loopback, a free port
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if not os.environ.get(v)]
    if missing:
        raise BuildError(f"distributed.nnodes is {nnodes}: the machines meet at MASTER_ADDR:MASTER_PORT, and each "
                         f"runs `doit` with its own NODE_RANK (0 to {nnodes - 1}); {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not set")
    return [f"--master-addr={os.environ['MASTER_ADDR']}", f"--master-port={os.environ['MASTER_PORT']}",
            f"--node-rank={os.environ['NODE_RANK']}"]


def _read_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def job_to_json(job: Job) -> dict:
    return {"task": job.task, "spec": job.spec.model_dump(mode="json"), "out": str(job.out),
            "root": str(job.root), "work": str(job.work), "key": job.key,
            "inputs": {str(i): str(p) for i, p in job.inputs.items()},
            "models": {f: m.model_dump(mode="json") for f, m in job.models.items()},
            "files": [[str(p) for p in paths] for paths in job.files]}


# ---------------------------------------------------------------- one process of the group

GLOO = "gloo_serial"  # gloo with one worker thread: see _gloo_one_thread


def _gloo_one_thread(store, rank, size, timeout):
    """Gloo as torch makes it, but with one thread running the collectives instead of two. With
    two, FSDP2's overlapping all-gathers hung (rank 1 spinning in a gloo buffer's destructor
    inside allgather_coalesced, rank 0 waiting to send) or aborted a process ("terminate called
    without an active exception"), in about one run in ten on a loaded 2-core machine; with
    one, 30 runs of the same step under the same load all passed (tests/test_distributed.py)."""
    from torch._C._distributed_c10d import ProcessGroupGloo

    options = ProcessGroupGloo._Options()
    options._timeout = timeout
    options._devices = [ProcessGroupGloo.create_default_device()]
    options._threads = 1
    return ProcessGroupGloo(store, rank, size, options)


@dataclass
class Parallel:
    """This process's place in the group, and the strategy's way with models and state."""

    strategy: str
    rank: int
    world: int
    local_rank: int
    cuda: bool

    @classmethod
    def start(cls, spec) -> "Parallel":
        import torch
        import torch.distributed as dist

        cuda = spec.device == "cuda" or (spec.device == "auto" and torch.cuda.is_available())
        local_rank = int(os.environ["LOCAL_RANK"])
        if cuda:
            torch.cuda.set_device(local_rank)
        if cuda:
            dist.init_process_group("nccl")
        else:
            if GLOO not in dist.Backend.backend_list:
                dist.Backend.register_backend(GLOO, _gloo_one_thread, devices=["cpu"])
            dist.init_process_group(GLOO)
        return cls(spec.distributed.strategy, dist.get_rank(), dist.get_world_size(), local_rank, cuda)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self):
        import torch

        return torch.device("cuda", self.local_rank) if self.cuda else torch.device("cpu")

    def share(self, batch: int) -> tuple[int, int]:
        """This process's rows of a micro-batch of `batch` sequences."""
        per = batch // self.world
        return self.rank * per, (self.rank + 1) * per

    def wrap(self, model):
        """The model as the strategy trains it: DDP around it, or sharded in place (FSDP2)."""
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            # a plug-in may leave parameters out of a step (a branch not taken, a memory not written)
            return DistributedDataParallel(model, device_ids=[self.local_rank] if self.cuda else None,
                                           find_unused_parameters=architectures.is_plugin_module(model))
        from torch.distributed.fsdp import fully_shard

        units = architectures.blocks(model)  # a plug-in's own blocks, when it names them
        for module in units or model.modules():  # one unit per decoder layer, the rest (embeddings, norm, head) the root's
            if units or type(module).__name__.endswith("DecoderLayer"):
                fully_shard(module)
        fully_shard(model)
        # the gradient is the processes' mean, divided by the world size after a SUM where the
        # backend has no AVG reduce-scatter (gloo): pytorch#162338 left it undivided in some
        # releases (gradients `world` times too large, silently); the factor is named here, and
        # tests/test_distributed.py compares the gradients with one process's
        model.set_gradient_divide_factor(float(self.world))
        return model

    def plain(self, model):
        """The module under the strategy's wrapper (DDP's `module`; FSDP2 shards in place)."""
        return model.module if self.strategy == "ddp" else model

    def sync(self, model, last: bool):
        """A context for one micro-batch's backward: gradients are reduced on the last one only."""
        if self.strategy == "ddp":
            return contextlib.nullcontext() if last else model.no_sync()
        model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def total(self, tensor):
        """`tensor` summed over the processes (a new tensor)."""
        import torch.distributed as dist

        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def broadcast(self, value):
        """Rank 0's `value` (a small JSON-able object) on every process."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # ------------------------------------------------------------ state

    def model_state(self, model) -> dict:
        """The full model state dict on rank 0 (on the CPU), {} on the others; collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def optimizer_state(self, model, optimizer) -> dict:
        """The full optimizer state dict on rank 0, keyed by parameter name; collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_state(self, model, optimizer, model_state: dict, optimizer_state: dict) -> None:
        """Rank 0's full state dicts into every process's shards; collective."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        set_model_state_dict(model, model_state, options=options)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
        for group in optimizer.param_groups:  # the broadcast makes AdamW's betas a list: a tuple, as built
            for name, value in group.items():
                if name != "params" and isinstance(value, list):
                    group[name] = tuple(value)

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()  # together: no process tears the group down while another still uses it
            dist.destroy_process_group()
