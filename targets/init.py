"""Init builder: a seeded, randomly initialized model (Llama, Qwen2 or Mistral) for a model spec.

Initialization follows transformers' Llama scheme (every matrix ~ N(0, 0.02), norms
one, the pad row of the embedding zero), drawn with numpy from the seed over the
tensor table of `compiler.params`, so this step needs neither torch nor transformers.

Reads: the model spec (`job.models["model"]`) and the paired tokenizer entry (for
its special-token ids). Writes: `model.safetensors` (no pickle) and `config.json`,
which `transformers.AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import json
import shutil

from compiler import params
from compiler.inputs import TOKENIZER
from targets import Job, special_ids
from targets.weights import hf_config, init_state

OUTPUTS = ("model.safetensors", "config.json")


def build(job: Job) -> dict:
    spec, model = job.spec, job.models["model"]
    ids = special_ids(job.inputs[TOKENIZER])
    config = hf_config(model, ids, spec.dtype)
    state = init_state(model, ids, spec.seed)
    (job.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _save(state, job.out / "model.safetensors", spec.dtype)
    # safetensors writes 0600 files; give the weights the umask's mode, as every other output has,
    # so a store shared between users or restored by CI stays readable
    shutil.copymode(job.out / "config.json", job.out / "model.safetensors")
    n = params.count(model)
    job.log(f"{n:,} parameters, seed {spec.seed}, {spec.dtype}")
    return {"parameters": n}


def _save(state: dict, path, dtype: str) -> None:
    """Write safetensors in `dtype`; numpy has no bfloat16, so that one goes through torch."""
    if dtype == "bfloat16":
        import torch
        from safetensors.torch import save_file

        save_file({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in state.items()}, str(path),
                  metadata={"format": "pt"})
        return
    from safetensors.numpy import save_file

    save_file({k: v.astype(dtype) for k, v in state.items()}, str(path), metadata={"format": "pt"})
