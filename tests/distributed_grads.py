"""Run by tests/test_distributed.py under torchrun: one optimizer step's gradients of a train
step's Trainer in this process group, gathered whole and written by rank 0 as safetensors.

    torchrun --standalone --nproc-per-node N tests/distributed_grads.py JOB_JSON OUT
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from targets import distributed, rank  # noqa: E402
from targets.train import Trainer  # noqa: E402


def main(job_file: str, out: str) -> None:
    from safetensors.torch import save_file

    job = rank.job_from_json(json.loads(Path(job_file).read_text()))
    parallel = distributed.Parallel.start(job.spec)
    trainer = Trainer(job, parallel)
    grads = {}

    def take(i: int) -> None:
        for name, p in parallel.plain(trainer.model).named_parameters():
            if p.grad is not None:  # FSDP's are DTensor shards: every process joins the gather
                grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                grads[name] = grad.detach().cpu().contiguous()

    trainer.inspect_gradients = take
    trainer.step(0)
    if parallel.main:
        save_file(grads, out)
    parallel.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
