"""One process of a train step trained in several (targets/distributed.py): torchrun runs
`python -m targets.rank JOB` once per process.

Reads the job the launcher wrote (spec, inputs, folders), joins the process group, and trains
as rank `RANK` with the Trainer of a one-process step; rank 0 writes the outputs and
`result.json` (the metrics, or the message of a BuildError) for the launcher. Process plumbing,
as runner.py is: it validates the spec again with compiler.specs, which no builder imports (a
builder's code digest, and so the keys of what it builds, must not follow the spec module).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from targets import BuildError, Job
from targets.distributed import RESULT_FILE, Parallel


def job_from_json(data: dict) -> Job:
    from compiler.inputs import Input
    from compiler.specs import ModelSpec, TrainStep

    return Job(data["task"], TrainStep.model_validate(data["spec"]), Path(data["out"]), root=Path(data["root"]),
               work=Path(data["work"]), key=data["key"],
               inputs={Input.parse(i): Path(p) for i, p in data["inputs"].items()},
               models={f: ModelSpec.model_validate(m) for f, m in data["models"].items()},
               files=[[Path(p) for p in paths] for paths in data["files"]])


def main(argv: list[str]) -> int:
    """One process of the group: train as rank `RANK`, rank 0 writing the outputs and result."""
    from targets.train import Trainer

    path = Path(argv[0])
    job = job_from_json(json.loads(path.read_text()))
    parallel = Parallel.start(job.spec)
    if not parallel.main:
        job.log = lambda message: None  # one voice: rank 0's
    try:
        trainer = Trainer(job, parallel)
        trainer.resume()
        trainer.run()
        result = trainer.finish()
    except BuildError as exc:
        if parallel.main:
            (path.parent / RESULT_FILE).write_text(json.dumps({"error": str(exc)}) + "\n")
        parallel.close()
        return 1
    if parallel.main:
        (path.parent / RESULT_FILE).write_text(json.dumps(result) + "\n")
    parallel.close()
    return 0


def leave(code: int) -> None:
    """Exit without the interpreter's teardown: every file this process writes is closed and
    the process group destroyed by now. A gloo process was seen aborted at exit ("terminate
    called without an active exception") after `main` had returned 0 and rank 0 had written
    everything, so torchrun failed a step that had succeeded; nothing is left for the
    teardown to do but that."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main(sys.argv[1:]))
