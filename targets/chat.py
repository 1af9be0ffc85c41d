"""The chat template as training and evaluation render it: one renderer, so the tokens a model
is trained on and the prompts it is measured with are written the same way. Reads the template
file and the tokenizer entry's special tokens; writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from targets import BuildError, special_tokens


def chat_renderer(path: Path, tokenizer_entry: Path):
    """render(instruction, response) -> (prompt, conversation): the user turn followed by the
    generation prompt, and the whole conversation, as the template writes them."""
    from jinja2 import StrictUndefined, TemplateError
    from jinja2.sandbox import SandboxedEnvironment

    names = special_tokens(tokenizer_entry)
    # trim_blocks and lstrip_blocks as in transformers' renderer: training sees what inference writes
    env = SandboxedEnvironment(undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    try:
        template = env.from_string(path.read_text(encoding="utf-8"))
    except TemplateError as exc:
        raise BuildError(f"chat template {path.name}: {type(exc).__name__}: {exc}") from None
    specials = {"bos_token": names.get("bos", ""), "eos_token": names.get("eos", "")}

    def render(instruction: str, response: str) -> tuple[str, str]:
        user = {"role": "user", "content": instruction}
        try:
            prompt = template.render(messages=[user], add_generation_prompt=True, **specials)
            full = template.render(messages=[user, {"role": "assistant", "content": response}],
                                   add_generation_prompt=False, **specials)
        except TemplateError as exc:
            raise BuildError(f"chat template {path.name}: {type(exc).__name__}: {exc}") from None
        return prompt, full

    return render
