"""The names of a step's inputs, typed once for the compiler that composes them and the builders
that read them: a renamed role fails on import and under a type checker, not with a KeyError
in a builder after everything upstream has been built.

An input is a role (what the entry is to the step) and, for the roles a step can have several
of, a name: `tokens` of each dataset a train step reads, `teacher` of each teacher (and
`teacher_outputs` of each teacher, dataset and window length it reads stored), `export` of each
export a report lists. Its text form (`tokenizer`, `tokens.pydocs`,
`teacher.teacher-a`) is what manifests and `doit explain` show. Stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Role(str, Enum):
    DATASET = "dataset"      # a dataset entry: shards and stats
    TOKENIZER = "tokenizer"  # a tokenizer entry
    TOKENS = "tokens"        # a dataset as token ids of the step's tokenizer (one per dataset)
    INIT = "init"            # the weights a train step starts from
    MODEL = "model"          # the weights an export or evaluate step reads
    TEACHER = "teacher"      # a distillation teacher's weights (one per teacher)
    TEACHER_OUTPUTS = "teacher_outputs"      # a step teacher's stored outputs on a dataset (one per teacher, dataset, seq_len)
    TEACHER_TOKENIZER = "teacher_tokenizer"  # the teacher's tokenizer, where it is not the student's (align uld or map)
    GGUF = "gguf"            # an evaluate step's GGUF export
    TRAIN = "train"          # the train step a report is about
    EVALUATE = "evaluate"    # a report's evaluate step
    EXPORT = "export"        # an export a report lists (one per export)
    COMPARE = "compare"      # a train step a report shows beside its own (one per step)
    DATA = "data"            # a train or evaluate step's dataset, until the compiler puts the tokens of it in its place
    FAILURES = "failures"    # the evaluate step a dataset's `type: failures` source reads (one per step)


NAMED = {Role.TOKENS, Role.TEACHER, Role.TEACHER_OUTPUTS, Role.EXPORT, Role.FAILURES, Role.COMPARE}  # roles a step can have several of, told apart by name


@dataclass(frozen=True, order=True)
class Input:
    role: Role
    name: str = ""

    def __post_init__(self) -> None:
        if (self.role in NAMED) != bool(self.name):
            raise ValueError(f"input role '{self.role.value}' {'needs a' if self.role in NAMED else 'takes no'} name")

    def __str__(self) -> str:
        return f"{self.role.value}.{self.name}" if self.name else self.role.value

    @classmethod
    def parse(cls, text: str) -> "Input":
        role, _, name = text.partition(".")
        return cls(Role(role), name)


DATASET, TOKENIZER, INIT, MODEL = Input(Role.DATASET), Input(Role.TOKENIZER), Input(Role.INIT), Input(Role.MODEL)
GGUF, TRAIN, EVALUATE, DATA = Input(Role.GGUF), Input(Role.TRAIN), Input(Role.EVALUATE), Input(Role.DATA)
TEACHER_TOKENIZER = Input(Role.TEACHER_TOKENIZER)


OWN_TEMPLATE = "@tokenizer"  # a step's `chat_template`: the tokenizer entry's own chat_template.jinja


def tokens(dataset: str) -> Input:
    return Input(Role.TOKENS, dataset)


def teacher(name: str) -> Input:
    return Input(Role.TEACHER, name)


def teacher_outputs(teacher: str, dataset: str, seq_len: int) -> Input:
    """A student's input: the stored outputs of its teacher `teacher` on `dataset` in windows of
    `seq_len` (`teacher_outputs.big~docs~128`; names hold no `~`)."""
    return Input(Role.TEACHER_OUTPUTS, f"{teacher}~{dataset}~{seq_len}")


def export(step: str) -> Input:
    return Input(Role.EXPORT, step)


def compare(step: str) -> Input:
    return Input(Role.COMPARE, step)


def failures(step: str) -> Input:
    """A dataset's input: the entry of evaluate step `step` (`pipeline.step`) whose failed items
    a `type: failures` source reads (`failures.cogumi.evaluate`)."""
    return Input(Role.FAILURES, step)


def of_role(inputs: dict[Input, object], role: Role) -> dict[str, object]:
    """The inputs of a named role, by name: a train step's `tokens` by dataset, its teachers."""
    return {i.name: v for i, v in sorted(inputs.items()) if i.role is role}
