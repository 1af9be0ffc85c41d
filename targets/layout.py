"""Fixed names of the files one builder writes and another reads, in one place: a builder
that reads them imports this module rather than the builder that writes them (whose every
edit would otherwise re-key the reader)."""

from __future__ import annotations


def gguf_file(type_name: str) -> str:
    """The GGUF export's file of one tensor type (`f16` -> `model-f16.gguf`)."""
    return f"model-{type_name}.gguf"


def adapter_file(type_name: str) -> str:
    """The GGUF adapter export's file of one tensor type (`f16` -> `adapter-f16.gguf`)."""
    return f"adapter-{type_name}.gguf"


# peft's file names, in the folder of a LoRA train entry where the train step writes them (beside
# config.json, transformers' from_pretrained would apply the adapter to the merged model again)
ADAPTER_DIR, ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter", "adapter_model.safetensors", "adapter_config.json"
