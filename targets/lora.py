"""LoRA and QLoRA for the train builder (peft): adapters around the built model, what a
checkpoint keeps of them, and the adapter folder a LoRA train step writes beside the merged model.

Reads: a train step's `lora` and `quantize_base`; for QLoRA, the `init` entry's Hugging Face
folder (`model.safetensors`, `config.json`), which transformers loads with bitsandbytes' 4-bit
NF4 linear layers on the GPU. Writes, into `adapter/` of the entry: `adapter_model.safetensors`
(peft's own state dict, `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`) and
`adapter_config.json` (peft's `LoraConfig`, in inference mode, as `PeftModel.save_pretrained`
writes it but with its sets as sorted lists, so the same adapter is the same bytes in every
process): a PEFT folder that `PeftModel.from_pretrained(base, folder)` loads. A folder of its
own, not beside the merged model: transformers' `from_pretrained` applies an
adapter_config.json it finds beside config.json, which would add the adapters a second time
to whatever loads the merged model (evaluate, a teacher, another step's `init`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from targets import BuildError
from targets.layout import ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS
from targets.trainloop import Trained

OUTPUTS = (f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}", f"{ADAPTER_DIR}/{ADAPTER_CONFIG}")
CUDA_EXTRA = "requirements-cuda.txt"


def lora_config(lora):
    """peft's `LoraConfig` of a step's `lora:` (no bias training, a causal language model)."""
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=sorted(lora.targets), bias="none", task_type="CAUSAL_LM")


def wrap(model, lora, seed: int):
    """`model` with an adapter on each of its `lora.targets` layers, the adapters alone trainable:
    B starts at zero, A is drawn from `seed` alone. peft draws A on the CPU before moving it to
    the base layer's device, so a GPU run starts from the same adapters; the RNG is forked, so
    the draws of the loop are the same with or without adapters."""
    import torch
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return get_peft_model(model, lora_config(lora)).train()


def merged(model):
    """The base model with every adapter folded into its weights (W + alpha / r · B · A): a plain
    transformers model again, whose weights anything downstream reads as a trained model's."""
    return model.merge_and_unload()


def attach(base, lora, state: dict, what: str):
    """`base` with the adapters of `state` (`adapter_weights` of a trained model)."""
    model = wrap(base, lora, 0)  # A is overwritten by the trained one at once
    load_adapter(model, state, what)
    return model


# ---------------------------------------------------------------- checkpoints and files

def adapter_weights(model) -> dict:
    """The adapters' tensors by peft's names (the adapter name left out), as adapter_model.safetensors holds them."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter(model, state: dict, what: str) -> None:
    """Put `state` into the adapters of `model` in place (the optimizer keeps its parameters);
    every adapter tensor must be there, with its shape, and nothing else."""
    from peft import set_peft_model_state_dict

    expected = adapter_weights(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise BuildError(f"{what} does not fit the adapters: missing {missing}, unexpected {unexpected}, "
                         f"of another shape {wrong}")
    set_peft_model_state_dict(model, state)


def adapter_weights_of_state(model, state: dict) -> dict:
    """`adapter_weights` of a peft model whose full state dict is `state`."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model, state_dict=state).items()}


def adapter_state(model, adapters: dict) -> dict:
    """The entries of the full state dict of a peft model that `adapter_weights` names: peft's
    file leaves the adapter's name out of each key, the model's parameters have it."""
    name = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapter[0]
    out = {}
    for key, value in adapters.items():
        stem, _, leaf = key.rpartition(".")
        out[f"{stem}.{name}.{leaf}"] = value
    return out


# what a LoRA checkpoint keeps of the model
ADAPTERS = Trained(ADAPTER_WEIGHTS, adapter_weights, load_adapter, adapter_weights_of_state, adapter_state)


def save_adapter(model, entry: Path) -> None:
    """adapter_model.safetensors and adapter_config.json of `model` into `adapter/` of `entry`."""
    from safetensors.torch import save_file

    out = entry / ADAPTER_DIR
    out.mkdir()
    save_file(adapter_weights(model), str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = model.peft_config["default"].to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    config["inference_mode"] = True  # as peft saves it: loaded for inference unless asked otherwise
    config["base_model_name_or_path"] = None  # peft takes the init entry's path: this machine's, not the adapter's
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------- QLoRA

def require_qlora(device) -> None:
    """QLoRA needs a CUDA device and bitsandbytes: checked before any data is read or model loaded."""
    if device.type != "cuda":
        raise BuildError(f"quantize_base: nf4 (QLoRA) needs a CUDA GPU, and this step runs on the {device.type}: "
                         f"bitsandbytes' 4-bit layers run on CUDA only. Build it on a machine with a GPU, or "
                         f"remove `quantize_base` to train the adapters over the unquantized base")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BuildError(f"quantize_base: nf4 (QLoRA) needs bitsandbytes, which is not installed: "
                         f"pip install -r {CUDA_EXTRA}")


def quantized_base(folder: Path, device):
    """The model of Hugging Face folder `folder` on `device`, its linear layers (the LM head
    aside) in 4-bit NF4 with double quantization and bfloat16 compute, the rest in float32,
    made ready by peft for training adapters over it (frozen, gradient checkpointing)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    index = device.index if device.index is not None else torch.cuda.current_device()
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=nf4, dtype=torch.float32,
                                                 device_map={"": index}, local_files_only=True,
                                                 trust_remote_code=False)
    return prepare_model_for_kbit_training(model)
