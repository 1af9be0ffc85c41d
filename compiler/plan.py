"""What the compiler hands the runner: one typed `Plan` per step, and the `Graph` of them that
resolves keys.

A step's key is the digest of its `base` (kind, builder code, library versions, device,
keyed spec, source files) and of the *output digests* of the entries it consumes, not their
keys: a producer rebuilt into byte-identical files leaves its consumers' keys where they were
(early cut-off, as Bazel and Shake do it). A consumer's key is therefore known once every
producer's entry is in the store; until then it is pending, and the runner resolves it at run
time, when doit has built the producers. Plans are frozen plain data: they pickle for `doit -n`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import store
from .keys import canonical, digest


@dataclass(frozen=True)
class Plan:
    task: str                         # doit task name: `dataset.NAME`, `PIPELINE.STEP`, `PIPELINE.TOK@DATA`
    kind: str                         # dataset, tokenizer, tokens, init, train, export, evaluate, report
    builder: str                      # the module under targets/ that builds it
    root: str                         # the project root
    link: str                         # friendly link, relative to the root
    profile: str | None
    default: bool                     # built by a plain `doit`
    summary: str                      # one line for `doit list`
    spec: dict                        # the keyed spec (UNKEYED fields left out; models' fields filled in)
    step: dict                        # the whole spec, as the builder is given it
    models: dict[str, dict]           # spec field -> model spec (whole)
    inputs: dict[str, str]            # input name -> the task that produces it
    sources: dict[str, str]           # files read outside the store: label -> xxh3 digest
    files: tuple[tuple[str, ...], ...]  # a dataset's files, per source
    code: dict                        # {"modules": {module: digest}, "libraries": {dist: version}}
    device: str | None                # the device kind a train or teacher-outputs step runs on (cpu, cuda); None elsewhere
    base: str = field(init=False)     # digest of all of the above that enters the key

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", digest(canonical(
            {"kind": self.kind, "code": self.code, "device": self.device, "spec": self.spec,
             "sources": self.sources})))


def key_of(base: str, outputs: dict[str, str]) -> str:
    """A step's key from its base and the output digest of each input (by input name)."""
    return digest(canonical({"base": base, "inputs": outputs}))


class Graph:
    """The plans of one compile, and their keys: resolved from the store as producers are built.

    Resolved keys and output digests are remembered (entries never change once complete);
    a pending one is asked again, since another process may have built the producer since.
    """

    def __init__(self, root: str, plans: dict[str, Plan]):
        self.root, self.plans = root, plans
        self._keys: dict[str, str] = {}
        self._outputs: dict[str, str] = {}

    def __getitem__(self, task: str) -> Plan:
        return self.plans[task]

    def key(self, task: str) -> str | None:
        """The step's key, or None while an input's entry is not in the store."""
        if task in self._keys:
            return self._keys[task]
        plan = self.plans[task]
        outputs = {}
        for name, producer in plan.inputs.items():
            out = self.output_digest(producer)
            if out is None:
                return None
            outputs[name] = out
        key = self._keys[task] = key_of(plan.base, outputs)
        return key

    def output_digest(self, task: str) -> str | None:
        """The digest of the output files of the step's entry, or None when it is not built."""
        if task in self._outputs:
            return self._outputs[task]
        key = self.key(task)
        out = store.output_digest(self.root, key) if key else None
        if out is not None:
            self._outputs[task] = out
        return out

    def pin(self, task: str, key: str, output_digest: str) -> None:
        """Take the step's key and output digest as given rather than resolved from this store: a
        Ray worker pins the producers of the step it builds as the driver, whose store holds their
        entries, resolved them (compiler/executor.py)."""
        self._keys[task], self._outputs[task] = key, output_digest

    def pending_on(self, task: str) -> list[str]:
        """The step's producers whose entries are not in the store yet: what keeps its key pending."""
        out: list[str] = []
        for producer in self.plans[task].inputs.values():
            if self.output_digest(producer) is None and producer not in out:
                out.append(producer)
        return out

    def inputs(self, task: str) -> dict[str, dict]:
        """Input name -> {task, key, outputs} of a step whose inputs are all built (for its manifest)."""
        return {name: {"task": producer, "key": self.key(producer), "outputs": self.output_digest(producer)}
                for name, producer in sorted(self.plans[task].inputs.items())}
