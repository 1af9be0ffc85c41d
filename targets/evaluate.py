"""Evaluate builder: what trained weights do on held-out text and how fast they generate.

Reads: `model.safetensors` and `config.json` of the weights entry (`job.inputs[MODEL]`),
the tokenizer entry, `validation.bin` and `tokens.json` of the tokens entry (the validation
split of `job.spec.data` as token ids), the chat template, and when the step names a GGUF
export (`job.inputs[GGUF]`) its `model-TYPE.gguf` files and manifest.

Writes: `metrics.json` with
* `data`: the dataset, split, window length, number of windows and of predicted tokens;
* `checkpoint`: mean next-token loss and perplexity of the weights (torch, float32) over
  windows of `seq_len` tokens cut from the start of the validation split;
* `gguf`: per GGUF type, the same on the same windows through llama.cpp (float32 KV cache,
  so only the weights' type differs), with file size, bits per weight and the perplexity
  ratio to the checkpoint; and how far its next-token distribution Q is from the
  checkpoint's P at every predicted token: KL(P || Q) in nats (float64, from the
  log-softmax of both logits; mean, median, 99th percentile, maximum) and the share of
  tokens where both rank the same token first. These are the definitions of
  `llama-perplexity --kl-divergence` ("Mean KLD", "99.0% KLD", "Same top p"), but not its
  sample: it scores only the second half of each chunk (after a BOS where the vocabulary
  adds one), against base log-probabilities stored in 16 bits (and drops those below
  e^-16); here every predicted token of every window counts, as the perplexities do;
* `generation`: per engine (the torch checkpoint, llama.cpp per GGUF type), greedy
  generation of up to `max_new_tokens` for each prompt of `job.spec.prompts`, rendered with
  the chat template: input and output tokens, latency, time to the first token, tokens/s
  (output tokens over the whole latency), their averages and peak, and the memory the
  weights take (their bytes, and the resident memory loading them added).
* with `prompt_set`, its `scored` counts (see `score_prompt_set`).
When `max_kld` is set, a type whose mean KL divergence is above its limit fails the step
(a BuildError naming every such type, raised once all types are measured and before the
generation benchmark), so nothing is written to the store.

With `prompt_set`, the step also reads the records of its dataset (`job.inputs[DATASET]`,
`train-*.jsonl` then `validation-*.jsonl`), generates an answer to each instruction (greedy,
torch, the chat template, `max_new_tokens`), scores it (targets/scoring.py; reference answers
and judge verdicts through targets/llm.py and its cache under build/cache/llm/, with the judge's
rubric `prompt_set.judge.template`) and writes `items.jsonl`: one JSON object per record, in
the prompt set's order, with exactly the keys `index`, `instruction`, `expected` (the record's
response), `answer` (the model's), `reference` (the reference model's answer; judge only, else
null), `scoring`, `passed` (exact, number, python; else null), `verdict` (`win`, `loss`, `tie`;
judge only, else null) and `detail` (why: the numbers compared, the failed test, the judge's
reason, or `unparseable: ...`). A failure is `passed: false` or a verdict of `loss` or `tie`:
what a `type: failures` dataset source turns into records. The counts are the returned metrics'
`prompt_set` (in the entry's manifest), not metrics.json, whose shape the report reads.

Timings are measured, so they differ between builds; everything else is a function of
the inputs (and, for a judge, of what the servers answer). metrics.json and what is read of other entries are typed in `compiler.entries`
(`EvaluationResults`, which the report reads; the tokens entry's `TokensInfo`; the GGUF
export's `GgufMetrics`).
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from compiler import entries
from compiler.entries import (CheckpointScore, Engine, EvaluationData, EvaluationResults, GenerationRun, Generation,
                              GgufEntry, GgufFile, GgufScore, PromptText, TokensEntry)
from compiler.inputs import DATASET, GGUF, MODEL, TOKENIZER, Role, of_role
from targets import BuildError, Job, load_tokenizer, llm, scoring, special_ids
from targets.chat import chat_renderer, template_path
from targets.layout import gguf_file

OUTPUTS = ("metrics.json",)
ITEMS = "items.jsonl"  # with a prompt set: one row per record (the contract of `score_prompt_set`)


def outputs(spec) -> tuple[str, ...]:
    return OUTPUTS + ((ITEMS,) if spec.prompt_set is not None else ())


def build(job: Job) -> dict:
    spec = job.spec
    windows = validation_windows(tokens_entry(job), spec.seq_len, spec.windows)
    before, started = resident(), time.perf_counter()
    model, weights_bytes = load_torch(job.inputs[MODEL], job.root)
    loaded = {"weights_bytes": weights_bytes, "load_seconds": time.perf_counter() - started,
              "rss_delta_bytes": resident() - before}
    n_params = sum(p.numel() for p in model.parameters())
    loss = torch_loss(model, windows)
    predicted = len(windows) * (spec.seq_len - 1)
    job.log(f"checkpoint: loss {loss:.4f}, perplexity {math.exp(loss):,.2f} on {predicted:,} validation tokens")
    dataset = entries.load(tokens_entry(job), TokensEntry).spec["dataset"]
    data = EvaluationData(dataset=dataset, split="validation", seq_len=spec.seq_len, windows=len(windows),
                          tokens=predicted)
    checkpoint = CheckpointScore(loss=loss, perplexity=math.exp(loss), parameters=n_params,
                                 weights_bytes=weights_bytes)
    files, scores = gguf_files(job), {}
    for name, path, facts in files:  # one GGUF model in memory at a time, beside the checkpoint
        scores[name] = gguf_score(path, facts, loss, *compare(model, path, windows))
        job.log(log_line(scores[name]))
    gate(spec.max_kld or {}, scores, predicted)  # before the benchmark: a failing step stops early
    prompts = prompt_set(job)
    engines = {"torch": torch_generation(job, model, prompts, loaded)}
    scored = score_prompt_set(job, model) if spec.prompt_set is not None else None
    del model
    for name, path, _ in files:
        engines[f"gguf-{name}"] = llama_generation(job, name, path, prompts)
    generation = Generation(max_new_tokens=spec.max_new_tokens,
                            prompts=[PromptText(name=p.name, text=p.text) for p in spec.prompts], engines=engines)
    results = EvaluationResults(data=data, checkpoint=checkpoint, gguf=scores, generation=generation)
    (job.out / entries.EVALUATION).write_text(results.to_json())
    return {"loss": loss, "perplexity": math.exp(loss),
            "gguf_perplexity": {t: g.perplexity for t, g in scores.items()},
            "gguf_kld_mean": {t: g.kld_mean for t, g in scores.items()},
            "tokens_per_s": {e: g.avg_tokens_per_s for e, g in engines.items()},
            **({"prompt_set": scored} if scored is not None else {})}


# ---------------------------------------------------------------- perplexity

def validation_windows(tokens: Path, seq_len: int, most: int) -> list[list[int]]:
    """Up to `most` consecutive, non-overlapping windows of `seq_len` ids from the start of the
    validation stream: the same tokens for every engine."""
    import numpy as np

    info = entries.read_tokens_info(tokens)
    stream = np.fromfile(tokens / "validation.bin", dtype=np.dtype(info.dtype).newbyteorder("<"))
    n = min(most, len(stream) // seq_len)
    if n == 0:
        raise BuildError(f"the validation split has {len(stream):,} tokens, fewer than one window of "
                         f"seq_len {seq_len:,}; lower seq_len or give the dataset a larger validation split")
    return [stream[i * seq_len:(i + 1) * seq_len].astype(np.int64).tolist() for i in range(n)]


def load_torch(folder: Path, root: Path | None = None):
    """The checkpoint as a float32 causal language model in eval mode, and its weights' bytes; a
    plug-in architecture's is built from the project at `root` (targets/architectures.py)."""
    import torch
    from transformers.utils import logging as hf_logging

    from targets.architectures import causal_lm

    hf_logging.disable_progress_bar()
    model = causal_lm(root, folder, torch.float32, "the checkpoint")
    return model, sum(p.numel() * p.element_size() for p in model.parameters())


def torch_loss(model, windows: list[list[int]]) -> float:
    """Mean cross-entropy (nats) of every next token after the first of each window."""
    total = sum(next_token_nll(log_probs, window) for window, (log_probs, _) in
                zip(windows, float_log_probs(model, windows)))
    return total / sum(len(w) - 1 for w in windows)


def float_log_probs(model, windows: list[list[int]]):
    """Per window, the checkpoint's next-token log-probabilities (float64, [seq_len - 1, vocab])
    and its top token at each position but the last. One window at a time: a batch of windows'
    logits over a vocabulary of 151,936 is gigabytes."""
    import torch

    with torch.no_grad():
        for window in windows:
            logits = model(torch.tensor([window])).logits[0, :-1]
            yield torch.log_softmax(logits.double(), dim=-1).numpy(), logits.argmax(dim=-1).numpy()


def llama_log_probs(llm, window: list[int]):
    """The same through llama.cpp, the window evaluated from an empty cache."""
    import numpy as np

    llm.reset()
    llm.eval(window)
    logits = np.asarray(llm.scores[:len(window) - 1])
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)), logits.argmax(axis=-1)


def next_token_nll(log_probs, window: list[int]) -> float:
    """Summed negative log-likelihood of each token of the window after the first."""
    import numpy as np

    return -float(log_probs[np.arange(len(window) - 1), window[1:]].sum())


def compare(model, path: Path, windows: list[list[int]]):
    """A GGUF file through llama.cpp against the checkpoint on the same windows, one window of
    both engines' logits at a time: its mean loss, KL(P_checkpoint || Q_file) at each predicted
    token, and at how many tokens both rank the same token first (argmax of the logits)."""
    import numpy as np
    from llama_cpp import GGML_TYPE_F32

    llm = open_llama(path, len(windows[0]), logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    nll, klds, same = 0.0, [], 0
    try:
        for window, (p_log, p_top) in zip(windows, float_log_probs(model, windows)):
            q_log, q_top = llama_log_probs(llm, window)
            nll += next_token_nll(q_log, window)
            klds.append((np.exp(p_log) * (p_log - q_log)).sum(axis=-1))
            same += int((p_top == q_top).sum())
    finally:
        llm.close()
    return nll / sum(len(w) - 1 for w in windows), np.concatenate(klds), same


def gguf_score(path: Path, facts: GgufFile, loss: float, g_loss: float, kld, same: int) -> GgufScore:
    """A GGUF file's row of metrics.json: its loss and per-token KL divergences summarized as
    llama-perplexity does (percentiles interpolated linearly, as numpy's default)."""
    import numpy as np

    return GgufScore(file=path.name, bytes=facts.bytes, bits_per_weight=facts.bits_per_weight, loss=g_loss,
                     perplexity=math.exp(g_loss), perplexity_ratio=math.exp(g_loss - loss),
                     kld_mean=float(kld.mean()), kld_median=float(np.median(kld)),
                     kld_p99=float(np.quantile(kld, 0.99)), kld_max=float(kld.max()), top1_same=same,
                     top1_agreement=same / len(kld))


def log_line(s: GgufScore) -> str:
    return (f"{s.file}: loss {s.loss:.4f}, perplexity {s.perplexity:,.2f} ({s.perplexity_ratio:.4f}x the "
            f"checkpoint's), mean KLD {s.kld_mean:.6f} (99%: {s.kld_p99:.6f}), same top token "
            f"{s.top1_agreement:.2%}")


def gate(limits: dict[str, float], scores: dict[str, GgufScore], tokens: int) -> None:
    """Fail the step when a type's mean KL divergence is above its `max_kld`, naming every such
    type (of `tokens` predicted)."""
    over = [f"{t}: mean KLD {s.kld_mean:.6f} > max_kld {limits[t]:g} (same top token {s.top1_agreement:.2%}, "
            f"{s.top1_same:,} of {tokens:,} tokens)"
            for t, s in scores.items() if t in limits and s.kld_mean > limits[t]]
    if over:
        raise BuildError(f"GGUF files further from the checkpoint than `max_kld` allows: {'; '.join(over)}; "
                         "export these types with more bits per weight (q8_0, q6_k), or raise their `max_kld`")


def open_llama(path: Path, context: int, **options):
    from llama_cpp import Llama

    return Llama(str(path), n_ctx=context, n_batch=max(context, 512), n_threads=os.cpu_count() or 1,
                 verbose=False, seed=0, **options)


def tokens_entry(job: Job) -> Path:
    """The tokens entry of the dataset measured (an evaluate step reads one)."""
    (entry,) = of_role(job.inputs, Role.TOKENS).values()
    return entry


def gguf_files(job: Job) -> list[tuple[str, Path, GgufFile]]:
    """(type, path, facts from the export's manifest) of each file of the GGUF export, in its order."""
    entry = job.inputs.get(GGUF)
    if entry is None:
        return []
    manifest = entries.load(entry, GgufEntry)
    files = manifest.metrics.files
    return [(t, entry / gguf_file(t), files[t]) for t in manifest.spec["types"] or ["f16"]]


# ---------------------------------------------------------------- generation

@dataclass
class Prompts:
    """The benchmark's prompts as token ids, and what the engines need of the tokenizer (read once)."""

    rendered: list[tuple[str, list[int]]]  # (name, ids)
    ids: dict[str, int | None]             # special ids by role
    tok: object                            # tokenizers.Tokenizer

    def decode(self, out: list[int]) -> tuple[list[int], str]:
        """A generation's ids cut at the first eos (which ends it and is not counted), and its text."""
        eos = self.ids.get("eos")
        out = out[:out.index(eos)] if eos in out else out
        return out, self.tok.decode(out)


def prompt_set(job: Job, texts: list[tuple[str, str]] | None = None) -> Prompts:
    """Each prompt (name, text; default the benchmark's `prompts`) a user turn rendered with the
    chat template, the assistant's turn opened, tokenized as transformers' apply_chat_template
    would (special tokens as tokens)."""
    entry = job.inputs[TOKENIZER]
    render = chat_renderer(template_path(job), entry)
    tok = load_tokenizer(entry)
    texts = [(p.name, p.text) for p in job.spec.prompts] if texts is None else texts
    rendered = [(name, tok.encode(render(text, "")[0], add_special_tokens=False).ids) for name, text in texts]
    return Prompts(rendered, special_ids(entry, tok), tok)


def greedy_options(job: Job, prompts: Prompts) -> dict:
    """What `generate()` is told: greedy, up to `max_new_tokens`, stopping at eos."""
    return dict(max_new_tokens=job.spec.max_new_tokens, do_sample=False, eos_token_id=prompts.ids.get("eos"),
                pad_token_id=prompts.ids.get("pad"))


def engine(label: str, runs: list[GenerationRun], weights_bytes: int, load_seconds: float,
           rss_delta_bytes: int) -> Engine:
    """An engine's runs with their averages and peak."""
    rates = [r.tokens_per_s for r in runs]
    return Engine(label=label, weights_bytes=weights_bytes, rss_delta_bytes=rss_delta_bytes,
                  load_seconds=load_seconds, runs=runs, avg_latency_s=sum(r.latency_s for r in runs) / len(runs),
                  avg_tokens_per_s=sum(rates) / len(rates), peak_tokens_per_s=max(rates),
                  output_tokens=sum(r.output_tokens for r in runs))


def resident() -> int:
    """This process's resident memory now, in bytes."""
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) * 1024


def torch_generation(job: Job, model, prompts: Prompts, loaded: dict) -> Engine:
    """Greedy `generate()` of the checkpoint on each prompt, timed with a streamer that notes when
    the first new token arrives; `loaded`: its weights' bytes and what loading it took."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):  # first call: the prompt; second: the first generated token
            self.calls += 1
            if self.calls == 2:
                self.first = time.perf_counter()

        def end(self):
            pass

    options = greedy_options(job, prompts)
    runs = []
    with torch.no_grad():
        model.generate(torch.tensor([prompts.rendered[0][1]]), **{**options, "max_new_tokens": 2})  # warm-up
        for name, prompt in prompts.rendered:
            clock = Clock()
            started = time.perf_counter()
            out = model.generate(torch.tensor([prompt]), streamer=clock, **options)[0, len(prompt):].tolist()
            latency = time.perf_counter() - started
            runs.append(run_row(name, prompt, out, latency, (clock.first or time.perf_counter()) - started,
                                prompts))
    result = engine("torch float32 checkpoint", runs, **loaded)
    job.log(f"torch: {result.avg_tokens_per_s:,.1f} tokens/s on average")
    return result


def llama_generation(job: Job, name: str, path: Path, prompts: Prompts) -> Engine:
    """Greedy generation through llama.cpp (temperature 0), token by token from its generator."""
    before, started = resident(), time.perf_counter()
    longest = max(len(p) for _, p in prompts.rendered) + job.spec.max_new_tokens
    llm = open_llama(path, longest)
    load_seconds, rss_delta = time.perf_counter() - started, resident() - before
    eos = llm.token_eos()
    runs = []
    for n, (prompt_name, prompt) in enumerate(prompts.rendered[:1] + prompts.rendered):  # the first warms up
        out: list[int] = []
        first = None
        started = time.perf_counter()
        for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            if token == eos:
                break
            out.append(token)
            first = first or time.perf_counter()
            if len(out) >= (2 if n == 0 else job.spec.max_new_tokens):
                break
        latency = time.perf_counter() - started
        if n:
            runs.append(run_row(prompt_name, prompt, out, latency, (first or time.perf_counter()) - started,
                                prompts))
    result = engine(f"llama.cpp {name}", runs, int(llm._model.size()), load_seconds, rss_delta)
    job.log(f"llama.cpp {name}: {result.avg_tokens_per_s:,.1f} tokens/s on average")
    return result


def run_row(name: str, prompt: list[int], out: list[int], latency: float, first: float,
            prompts: Prompts) -> GenerationRun:
    out, text = prompts.decode(out)
    return GenerationRun(prompt=name, input_tokens=len(prompt), output_tokens=len(out), latency_s=latency,
                         first_token_s=first, tokens_per_s=len(out) / latency if latency > 0 else 0.0, text=text)


# ---------------------------------------------------------------- a scored prompt set

def score_prompt_set(job: Job, model) -> dict:
    """Answer and score every record of `prompt_set`, write items.jsonl, and return the counts:
    `items`; `passed`, `failed` (exact, number, python) or `wins`, `losses`, `ties`,
    `unparseable` (judge); `failures` (what a failures source takes: failed, lost or tied);
    `accuracy` (passed, or won, over items); for python how the sandbox confined the tests,
    for a judge the cache's `hits` and `misses` (requests sent) per endpoint and retries."""
    ps = job.spec.prompt_set
    records = read_records(job.inputs[DATASET], ps.split, ps.limit)
    if not records:
        raise BuildError(f"the prompt set (dataset '{ps.dataset}', split '{ps.split}') has no records; use "
                         "another split, or add records to the dataset")
    job.log(f"prompt set: {len(records):,} records of '{ps.dataset}' ({ps.split}), scoring: {ps.scoring}")
    answers = generate_answers(job, model, [instruction for instruction, _ in records])
    counts: dict = {"dataset": ps.dataset, "split": ps.split, "scoring": ps.scoring, "items": len(records)}
    references: list[str | None] = [None] * len(records)
    if ps.scoring == "judge":
        scores, references, counts["cache"], counts["retries"] = judge_all(job, records, answers)
    elif ps.scoring == "python":
        scores, confinements = python_all(records, answers, ps.timeout, ps.memory_mb)
        counts["sandbox"] = sorted(c for c in confinements if c)
    else:
        scores = [scoring.exact(a, r) if ps.scoring == "exact" else scoring.number(a, r, ps.pattern)
                  for a, (_, r) in zip(answers, records)]
    with open(job.out / ITEMS, "w", encoding="utf-8") as f:
        for i, ((instruction, expected), answer, reference, s) in enumerate(zip(records, answers, references, scores)):
            f.write(json.dumps({"index": i, "instruction": instruction, "expected": expected, "answer": answer,
                                "reference": reference, "scoring": ps.scoring, "passed": s.passed,
                                "verdict": s.verdict, "detail": s.detail}, ensure_ascii=False) + "\n")
    counts.update(tally(ps.scoring, scores))
    job.log(summary_line(counts))
    return counts


def read_records(entry: Path, split: str, limit: int | None) -> list[tuple[str, str]]:
    """(instruction, response) of the dataset entry's records of `split` (`all`: train, then
    validation), in its order, the first `limit` of them."""
    splits = ("train", "validation") if split == "all" else (split,)
    out: list[tuple[str, str]] = []
    for shard in [s for name in splits for s in sorted(entry.glob(f"{name}-*.jsonl"))]:
        with open(shard, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                    pair = (record["instruction"], record["response"])
                except (ValueError, KeyError, TypeError):
                    raise BuildError(f"{shard.name}, line {n}: not an instruction/response record") from None
                out.append(pair)
                if limit is not None and len(out) == limit:
                    return out
    return out


def generate_answers(job: Job, model, instructions: list[str]) -> list[str]:
    """The checkpoint's greedy answer to each instruction, rendered with the chat template, as
    the benchmark generates (its decoded text up to eos or `max_new_tokens`)."""
    import torch

    prompts = prompt_set(job, [(str(i), text) for i, text in enumerate(instructions)])
    limit = model.config.max_position_embeddings
    options = greedy_options(job, prompts)
    answers = []
    with torch.no_grad():
        for n, (name, ids) in enumerate(prompts.rendered):
            if len(ids) + job.spec.max_new_tokens > limit:
                raise BuildError(f"prompt set record {name}: its prompt is {len(ids):,} tokens, and with "
                                 f"max_new_tokens {job.spec.max_new_tokens:,} that passes the model's "
                                 f"max_positions ({limit:,}); lower max_new_tokens, or `limit` the set to "
                                 "shorter records")
            out = model.generate(torch.tensor([ids]), **options)[0, len(ids):].tolist()
            answers.append(prompts.decode(out)[1])
            if (n + 1) % 100 == 0:
                job.log(f"prompt set: {n + 1:,} of {len(instructions):,} answers")
    return answers


def python_all(records: list[tuple[str, str]], answers: list[str], timeout: float,
               memory_mb: int) -> tuple[list[scoring.Score], set[str]]:
    """Each answer's code and its record's tests in the sandbox, a few at a time (each a
    process of its own): the scores in order, and how the children were confined."""
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda item: scoring.python(item[0], item[1][1], timeout, memory_mb),
                                zip(answers, records)))
    return [score for score, _ in results], {confinement for _, confinement in results}


def judge_all(job: Job, records: list[tuple[str, str]], answers: list[str]):
    """The reference's answer to each instruction, then the judge's verdict on each pair, both
    through the cache: (scores, reference answers, cache counts, retries)."""
    ps = job.spec.prompt_set
    cache = llm.project_cache(job.root)
    reference = llm.Client(llm.Endpoint.of(ps.reference), cache, job.log, "reference")
    judge = llm.Client(llm.Endpoint.of(ps.judge), cache, job.log, "judge")
    asked = [llm.Request([{"role": "user", "content": instruction}]) for instruction, _ in records]
    refs = [a.content for a in reference.complete(asked)]
    files = rubric_files(job)
    render, digest = scoring.rubric(files), rubric_digest(files)
    fmt = scoring.response_format(ps.judge.response_format)
    params = {"response_format": fmt} if fmt is not None else {}
    verdicts = judge.complete([llm.Request([{"role": "user", "content": render(instruction, answer, ref, expected)}],
                                           params, digest)
                               for (instruction, expected), answer, ref in zip(records, answers, refs)])
    cache_counts = {name: {"hits": c.hits, "misses": c.misses} for name, c in (("reference", reference),
                                                                               ("judge", judge))}
    return ([scoring.verdict(v.content) for v in verdicts], refs, cache_counts,
            {"reference": reference.retried, "judge": judge.retried})


def rubric_files(job: Job) -> list[Path]:
    """The judge's rubric and what it includes (the compiler checked they parse)."""
    from compiler import templates

    return templates.check(job.root / job.spec.prompt_set.judge.template)


def rubric_digest(files: list[Path]) -> str:
    """xxh3-128 over each rubric file's name (from the rubric's folder: it includes the others by
    it) and bytes: a verdict's cache key changes with any of them, not with where they lie."""
    import xxhash

    h = xxhash.xxh3_128()
    for file in files:
        for part in (os.path.relpath(file, files[0].parent).encode(), file.read_bytes()):
            h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()


def tally(kind: str, scores: list[scoring.Score]) -> dict:
    n = len(scores)
    if kind == "judge":
        wins, losses, ties = (sum(s.verdict == v for s in scores) for v in ("win", "loss", "tie"))
        return {"wins": wins, "losses": losses, "ties": ties, "unparseable": n - wins - losses - ties,
                "failures": losses + ties, "accuracy": wins / n}
    passed = sum(bool(s.passed) for s in scores)
    return {"passed": passed, "failed": n - passed, "failures": n - passed, "accuracy": passed / n}


def summary_line(c: dict) -> str:
    if c["scoring"] == "judge":
        cache = ", ".join(f"{name} {v['hits']:,} cached / {v['misses']:,} asked" for name, v in c["cache"].items())
        return (f"prompt set: {c['wins']:,} wins, {c['losses']:,} losses, {c['ties']:,} ties, {c['unparseable']:,} "
                f"unparseable of {c['items']:,} ({cache})")
    return f"prompt set: {c['passed']:,} of {c['items']:,} passed ({c['accuracy']:.2%})"
