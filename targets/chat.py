"""The chat template as training and evaluation render it: one renderer, so the tokens a model
is trained on and the prompts it is measured with are written the same way. Reads the template
file and the tokenizer entry's special tokens; writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from compiler.inputs import OWN_TEMPLATE, TOKENIZER
from targets import BuildError, Job, special_tokens


def template_path(job: Job) -> Path:
    """The step's chat template file: a file of the project, or (`@tokenizer`) the tokenizer
    entry's own chat_template.jinja."""
    rel = job.spec.chat_template
    if rel != OWN_TEMPLATE:
        return job.root / rel
    path = job.inputs[TOKENIZER] / "chat_template.jinja"
    if not path.is_file():
        raise BuildError(f"the tokenizer ('{job.spec.tokenizer if hasattr(job.spec, 'tokenizer') else 'of the model'}') "
                         "has no chat template of its own; set `chat_template:` to a Jinja file of the project, "
                         "e.g. specs/templates/chat.jinja")
    return path


def chat_renderer(path: Path, tokenizer_entry: Path):
    """render(instruction, response) -> (prompt, conversation): the user turn followed by the
    generation prompt, and the whole conversation, as the template writes them."""
    from jinja2 import StrictUndefined, TemplateError
    from jinja2.sandbox import SandboxedEnvironment

    names = special_tokens(tokenizer_entry)
    # the environment of transformers' renderer (trim_blocks, lstrip_blocks, loop controls, its
    # globals and tojson): training sees what inference writes, for the templates models ship with
    env = SandboxedEnvironment(undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                               extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=_raise, strftime_now=_strftime_now)
    env.filters["tojson"] = _tojson
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


def _raise(message: str):
    from jinja2 import TemplateError

    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    import datetime

    return datetime.datetime.now().strftime(fmt)


def _tojson(value, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    import json

    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
