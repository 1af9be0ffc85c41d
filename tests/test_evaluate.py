"""Evaluate builder, through a real project: its perplexities recomputed independently (torch
over the same validation windows, llama.cpp's files against the checkpoint), the KL
divergence and top-token agreement of each GGUF type recomputed from both engines' logits,
the `max_kld` gate, and its generation benchmark checked for what it claims to count."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import yaml

from compiler import entries
from compiler.entries import GgufEntry
from compiler.specs import DEFAULT_PROMPTS
from conftest import REPO, Project, code_project, require_llama_cpp, tiny_corpus, TINY_SPECS
from targets import BuildError

pytestmark = pytest.mark.slow  # trains a small model and loads GGUF files in llama.cpp

STEPS = {
    "student": {"kind": "train", "model": "tiny", "tokenizer": "tok", "data": "docs", "max_steps": 15,
                "batch_size": 4, "seq_len": 32, "optimizer": {"lr": 0.003}, "eval": {"every": 100, "batches": 1}},
    "gguf": {"kind": "export", "format": "gguf", "model": "student", "types": ["f32", "q8_0", "q4_0"]},
    "init-gguf": {"kind": "export", "format": "gguf", "model": "init", "types": ["q4_0"]},
    "evaluate": {"kind": "evaluate", "model": "student", "gguf": "gguf", "seq_len": 32, "windows": 6,
                 "max_new_tokens": 8},
    "short": {"kind": "evaluate", "model": "student", "seq_len": 32, "windows": 2, "max_new_tokens": 4,
              "prompts": [{"name": "hi", "text": "Hi there."}]},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Project:
    require_llama_cpp()
    p = code_project(tmp_path_factory.mktemp("evaluate") / "proj")
    p.write("data/docs.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()))
    p.write("specs/templates/chat.jinja", (REPO / "specs/templates/chat.jinja").read_text())
    for rel, text in TINY_SPECS.items():
        p.write(rel, text)
    pipeline = yaml.safe_load(p.read("specs/pipelines/main.yaml"))
    pipeline["steps"].update(STEPS)
    p.write("specs/pipelines/main.yaml", yaml.safe_dump(pipeline, sort_keys=False))
    p.doit()
    return p


def metrics(p: Project, step: str = "evaluate") -> dict:
    return json.loads((p.root / "build/main" / step / "metrics.json").read_text())


def windows(p: Project, seq_len: int, n: int) -> np.ndarray:
    stream = np.fromfile(p.root / "build/main/tok@docs/validation.bin", dtype="<u2")
    return stream[: n * seq_len].reshape(n, seq_len).astype(np.int64)


def test_checkpoint_perplexity_is_the_mean_next_token_loss_on_the_validation_windows(built):
    import torch
    from transformers import AutoModelForCausalLM

    m = metrics(built)
    ids = torch.from_numpy(windows(built, 32, 6))
    model = AutoModelForCausalLM.from_pretrained(built.root / "build/main/student", dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(ids).logits[:, :-1].double()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()
    assert m["data"] == {"dataset": "docs", "split": "validation", "seq_len": 32, "windows": 6, "tokens": 6 * 31}
    assert m["checkpoint"]["loss"] == pytest.approx(loss, abs=1e-9)
    assert m["checkpoint"]["perplexity"] == pytest.approx(math.exp(loss), rel=1e-9)
    assert m["checkpoint"]["parameters"] == 51_360 and m["checkpoint"]["weights_bytes"] == 4 * 51_360


def test_each_gguf_file_is_measured_on_the_same_tokens(built):
    m = metrics(built)
    files = entries.load(built.root / "build/main/gguf", GgufEntry).metrics.files
    assert list(m["gguf"]) == ["f32", "q4_0", "q8_0"]  # `types` is a set: its order enters no key
    for name, row in m["gguf"].items():
        assert row["file"] == f"model-{name}.gguf"
        assert (row["bytes"], row["bits_per_weight"]) == (files[name].bytes, files[name].bits_per_weight)
        assert row["perplexity"] == pytest.approx(math.exp(row["loss"]))
        assert row["perplexity_ratio"] == pytest.approx(row["perplexity"] / m["checkpoint"]["perplexity"])
    # llama.cpp on the f32 file computes what torch computes; q8_0 is close, not equal
    assert m["gguf"]["f32"]["loss"] == pytest.approx(m["checkpoint"]["loss"], abs=1e-4)
    assert m["gguf"]["q8_0"]["loss"] != m["gguf"]["f32"]["loss"]
    assert m["gguf"]["q8_0"]["perplexity_ratio"] == pytest.approx(1.0, abs=0.01)


def float_model(p: Project, step: str = "student"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(p.root / "build/main" / step, dtype=torch.float32).eval()


def both_engines(model, path, ids: np.ndarray) -> tuple[list, list[int]]:
    """Per window: KL(P_torch || Q_llama.cpp) at each predicted token, by torch's `kl_div` on the
    float64 log-softmax of each engine's logits, and at how many tokens their argmaxes agree.
    llama.cpp through the binding's own calls, not the builder's."""
    import torch
    from llama_cpp import GGML_TYPE_F32, Llama

    llm = Llama(str(path), n_ctx=32, n_batch=512, n_threads=os.cpu_count(), logits_all=True, verbose=False,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    klds, same = [], []
    for window in ids:
        with torch.no_grad():
            p_logits = model(torch.from_numpy(window)[None]).logits[0, :-1]
        llm.reset()
        llm.eval(window.tolist())
        q_logits = torch.from_numpy(np.array(llm.scores[:len(window) - 1]))
        p_log, q_log = (torch.log_softmax(x.double(), dim=-1) for x in (p_logits, q_logits))
        klds.append(torch.nn.functional.kl_div(q_log, p_log, reduction="none", log_target=True).sum(-1).numpy())
        same.append(int((p_logits.argmax(-1) == q_logits.argmax(-1)).sum()))
    llm.close()
    return klds, same


def test_kl_divergence_and_top_token_agreement_recomputed_from_both_engines(built):
    """Per type, every statistic of metrics.json from both engines' logits, and the builder's
    per-token values on the first window."""
    from targets.evaluate import compare

    model = float_model(built)
    ids = windows(built, 32, 6)
    for name, row in metrics(built)["gguf"].items():
        path = built.root / "build/main/gguf" / f"model-{name}.gguf"
        klds, same = both_engines(model, path, ids)
        kld = np.concatenate(klds)
        expected = {"kld_mean": kld.mean(), "kld_median": np.median(kld), "kld_p99": np.percentile(kld, 99),
                    "kld_max": kld.max()}
        # two float64 log-softmaxes of the same logits differ by rounding (~1e-16 per entry), and so do
        # KL divergences computed from them: f32's (~1e-15) agree to that, the others to 1e-6 relative
        assert {k: row[k] for k in expected} == pytest.approx(expected, rel=1e-6, abs=1e-15), name
        assert (row["top1_same"], row["top1_agreement"]) == (sum(same), sum(same) / (6 * 31)), name
        _, first, first_same = compare(model, path, [ids[0].tolist()])
        assert first == pytest.approx(klds[0], rel=1e-6, abs=1e-15), name
        assert first_same == same[0], name


def test_top_tokens_that_differ_are_counted(built):
    """The trained student ranks one token first almost everywhere, so its files agree on every
    top token. The random initialization's logits lie close together, and its q4_0 file ranks
    another token first at some positions but not all: the count is tested on both kinds."""
    from targets.evaluate import compare

    model = float_model(built, "init")
    ids = windows(built, 32, 6)
    path = built.root / "build/main/init-gguf/model-q4_0.gguf"
    klds, same = both_engines(model, path, ids)
    _, kld, found_same = compare(model, path, ids.tolist())
    assert kld == pytest.approx(np.concatenate(klds), rel=1e-6)
    assert found_same == sum(same) and 6 * 31 // 2 < found_same < 6 * 31


def test_kl_divergence_grows_as_bits_per_weight_shrink(built):
    g = metrics(built)["gguf"]
    # llama.cpp computes the f32 file as torch computes the checkpoint, up to float32 rounding:
    # measured, a mean KLD of 1.4e-15 and a largest of 3.5e-15 nats
    assert g["f32"]["kld_max"] < 1e-10 and g["f32"]["top1_agreement"] == 1.0
    assert g["f32"]["kld_mean"] < g["q8_0"]["kld_mean"] < g["q4_0"]["kld_mean"]
    assert g["f32"]["kld_p99"] < g["q8_0"]["kld_p99"] < g["q4_0"]["kld_p99"]
    for row in g.values():
        assert 0 <= row["kld_median"] <= row["kld_p99"] <= row["kld_max"] and row["kld_mean"] <= row["kld_max"]


def test_max_kld_fails_the_step_naming_every_type_above_its_limit(built):
    """A copy of `evaluate` with limits: q8_0 and q4_0 set below what they measure fail it, after
    every type is measured (each file's log line is printed) and before anything is stored;
    limits above what they measure let it build."""
    g = metrics(built)["gguf"]
    below = {t: float(f"{g[t]['kld_mean'] / 2:.2g}") for t in ("q8_0", "q4_0")}
    path = built.root / "specs/pipelines/main.yaml"
    original = path.read_text()
    store = sorted(p.name for p in (built.root / "build/store").iterdir())
    pipeline = yaml.safe_load(original)
    gated = {**STEPS["evaluate"], "max_new_tokens": 1, "prompts": [{"name": "hi", "text": "Hi."}]}
    try:
        pipeline["steps"]["gated"] = {**gated, "max_kld": {"f32": 1e-6, **below}}
        path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
        result = built.doit(check=False)
        assert result.returncode == 1
        failing = "; ".join(f"{t}: mean KLD {g[t]['kld_mean']:.6f} > max_kld {below[t]:g} (same top token 100.00%, "
                            "186 of 186 tokens)" for t in ("q4_0", "q8_0"))
        assert result.stdout.endswith(
            ".  main.gated\nTaskFailed - taskid:main.gated\n"
            f"main.gated: GGUF files further from the checkpoint than `max_kld` allows: {failing}; export these "
            "types with more bits per weight (q8_0, q6_k), or raise their `max_kld`\n\n")
        for t, row in g.items():
            assert (f"  [main.gated] model-{t}.gguf: loss {row['loss']:.4f}, perplexity {row['perplexity']:,.2f} "
                    f"({row['perplexity_ratio']:.4f}x the checkpoint's), mean KLD {row['kld_mean']:.6f} (99%: "
                    f"{row['kld_p99']:.6f}), same top token 100.00%\n") in result.stderr
        assert sorted(p.name for p in (built.root / "build/store").iterdir()) == store
        assert not (built.root / "build/main/gated").exists()

        pipeline["steps"]["gated"]["max_kld"] = {t: 2 * v for t, v in below.items()}
        path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
        built.doit()
        assert {t: r["kld_mean"] for t, r in metrics(built, "gated")["gguf"].items()} == \
            {t: r["kld_mean"] for t, r in g.items()}
    finally:
        path.write_text(original)


def test_generation_benchmark_counts_what_it_says(built):
    from transformers import AutoTokenizer

    m = metrics(built)["generation"]
    tok = AutoTokenizer.from_pretrained(built.root / "build/main/tok")
    template = (REPO / "specs/templates/chat.jinja").read_text()
    assert m["max_new_tokens"] == 8
    assert m["prompts"] == [{"name": p.name, "text": p.text} for p in DEFAULT_PROMPTS]
    assert [p.name for p in DEFAULT_PROMPTS] == ["greeting", "tool-routing", "code", "factual", "explanation"]
    assert list(m["engines"]) == ["torch", "gguf-f32", "gguf-q4_0", "gguf-q8_0"]
    for name, engine in m["engines"].items():
        runs = engine["runs"]
        assert [r["prompt"] for r in runs] == [p.name for p in DEFAULT_PROMPTS]
        for run, prompt in zip(runs, DEFAULT_PROMPTS):
            # the prompt as transformers' apply_chat_template renders and tokenizes it
            ids = tok.apply_chat_template([{"role": "user", "content": prompt.text}], chat_template=template,
                                          add_generation_prompt=True, tokenize=True, return_dict=False)
            assert run["input_tokens"] == len(ids), (name, prompt.name)
            assert 0 <= run["output_tokens"] <= 8
            assert 0 < run["first_token_s"] <= run["latency_s"]
            assert run["tokens_per_s"] == pytest.approx(run["output_tokens"] / run["latency_s"])
            assert tok.decode(tok(run["text"], add_special_tokens=False)["input_ids"]) == run["text"]
        assert engine["avg_latency_s"] == pytest.approx(sum(r["latency_s"] for r in runs) / 5)
        assert engine["avg_tokens_per_s"] == pytest.approx(sum(r["tokens_per_s"] for r in runs) / 5)
        assert engine["peak_tokens_per_s"] == max(r["tokens_per_s"] for r in runs)
        assert engine["output_tokens"] == sum(r["output_tokens"] for r in runs)
        assert engine["load_seconds"] > 0 and engine["weights_bytes"] > 0
    assert m["engines"]["torch"]["weights_bytes"] == 4 * 51_360
    gguf_files = entries.load(built.root / "build/main/gguf", GgufEntry).metrics.files
    # llama.cpp's own count of the weights' bytes is the file's tensor data
    assert m["engines"]["gguf-q8_0"]["weights_bytes"] == gguf_files["q8_0"].tensor_bytes


def test_a_manifest_prompt_set_and_no_gguf(built):
    m = metrics(built, "short")
    assert m["gguf"] == {} and list(m["generation"]["engines"]) == ["torch"]
    assert [r["prompt"] for r in m["generation"]["engines"]["torch"]["runs"]] == ["hi"]
    assert m["data"]["windows"] == 2
    assert m["checkpoint"]["loss"] != metrics(built)["checkpoint"]["loss"]  # 2 windows, not 6


def test_a_validation_split_shorter_than_a_window_is_an_error(tmp_path):
    from targets.evaluate import validation_windows

    (tmp_path / "tokens.json").write_text(json.dumps({"dtype": "uint16", "eos_id": 2, "bos_id": None, "pad_id": None,
                                                      "vocab_size": 400, "splits": {}}))
    np.arange(40, dtype="<u2").tofile(tmp_path / "validation.bin")
    assert len(validation_windows(tmp_path, 16, 10)) == 2
    with pytest.raises(BuildError) as info:
        validation_windows(tmp_path, 64, 10)
    assert str(info.value) == ("the validation split has 40 tokens, fewer than one window of seq_len 64; lower "
                               "seq_len or give the dataset a larger validation split")


# ---------------------------------------------------------------- a scored prompt set, judged on a llama.cpp server

PROBE = [{"instruction": "What is 2 + 2?", "response": "2 + 2 = 4\n#### 4"},
         {"instruction": "Name a Python keyword.", "response": "def"},
         {"instruction": "How many sides has a square?", "response": "#### 4"},
         {"instruction": "What does len() return?", "response": "The number of items of an object."}]
CODE = [{"instruction": "Write a function add(a, b) returning their sum.", "response": "assert add(1, 2) == 3\n"},
        {"instruction": "Write a function neg(x) returning -x.", "response": "assert neg(2) == -2\n"}]
SMALL = {"kind": "evaluate", "seq_len": 32, "windows": 1, "max_new_tokens": 8, "prompts": [{"name": "hi", "text": "Hi."}]}
CONTRACT = ["index", "instruction", "expected", "answer", "reference", "scoring", "passed", "verdict", "detail"]


def judged_steps(server_url: str) -> dict:
    endpoints = {"judge": {"url": server_url, "model": "tiny-judge"},
                 "reference": {"url": server_url, "model": "tiny-reference", "max_tokens": 16}}
    judge = {"dataset": "probe", "scoring": "judge", **endpoints}
    return {
        "exact": {**SMALL, "model": "main.student", "prompt_set": {"dataset": "probe", "scoring": "exact"}},
        "number": {**SMALL, "model": "main.student", "prompt_set": {"dataset": "probe", "scoring": "number"}},
        "python": {**SMALL, "model": "main.student", "prompt_set": {"dataset": "code", "scoring": "python",
                                                                     "timeout": 5}},
        "judged": {**SMALL, "model": "main.student", "prompt_set": judge},
        "rejudged": {**SMALL, "model": "main.init", "data": "docs", "prompt_set": judge},  # another model
        "again": {**SMALL, "model": "main.student", "windows": 2, "prompt_set": judge},   # the same answers
    }


def build_tasks(p: Project, *tasks: str) -> None:
    """Build `tasks` and what they need, in this interpreter, in dependency order."""
    import runner
    from compiler import graph, project

    g = graph.compile_graph(project.load(p.root))
    need, todo = set(), list(tasks)
    while todo:
        task = todo.pop()
        if task not in need:
            need.add(task)
            todo += g.plans[task].inputs.values()
    for task in [t for t in g.plans if t in need]:
        assert runner.run(g, task) is None, task


@pytest.fixture(scope="module")
def server(built, tmp_path_factory):
    """llama-cpp-python's server on loopback serving the f32 GGUF file of the project's student:
    the reference model and the judge of these tests."""
    from servers import LlamaServer

    s = LlamaServer(built.root / "build/main/gguf/model-f32.gguf", tmp_path_factory.mktemp("llama-server"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def scored(built, server) -> Project:
    """Pipeline `scored`: the prompt sets scored each way; the judged steps built one at a time,
    the server's count of chat requests noted after each."""
    p = built
    p.write("probe/probe.jsonl", "".join(json.dumps(r) + "\n" for r in PROBE))
    p.write("code/code.jsonl", "".join(json.dumps(r) + "\n" for r in CODE))
    for name in ("probe", "code"):
        p.write(f"specs/datasets/{name}.yaml", yaml.safe_dump({
            "kind": "dataset", "name": name, "sources": [{"type": "files", "glob": f"{name}/*.jsonl",
                                                          "fields": {"instruction": "instruction",
                                                                     "response": "response"}}]}))
    p.write("specs/templates/judge.jinja", (REPO / "specs/templates/judge.jinja").read_text())
    p.write("specs/pipelines/scored.yaml", yaml.safe_dump({"kind": "pipeline", "name": "scored", "default": False,
                                                           "steps": judged_steps(server.url)}, sort_keys=False))
    p.requests = {}
    build_tasks(p, "scored.exact", "scored.number", "scored.python")
    for step in ("judged", "rejudged", "again"):
        before = server.chat_requests()
        build_tasks(p, f"scored.{step}")
        p.requests[step] = server.chat_requests() - before
    return p


def items(p: Project, step: str) -> list[dict]:
    lines = (p.root / "build/scored" / step / "items.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def scores(p: Project, step: str) -> dict:
    return json.loads((p.root / "build/scored" / step / "manifest.json").read_text())["metrics"]["prompt_set"]


def test_answers_are_the_checkpoints_greedy_generation(scored):
    """Each answer recomputed with transformers: the instruction through apply_chat_template,
    greedy generate() of 8 tokens, decoded without special tokens."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(scored.root / "build/main/tok")
    model = float_model(scored)
    template = (REPO / "specs/templates/chat.jinja").read_text()
    rows = items(scored, "exact")
    assert [r["index"] for r in rows] == [0, 1, 2, 3] and all(list(r) == CONTRACT for r in rows)
    for row, record in zip(rows, PROBE):
        ids = tok.apply_chat_template([{"role": "user", "content": record["instruction"]}], chat_template=template,
                                      add_generation_prompt=True, tokenize=True, return_dict=False)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        if tok.eos_token_id in out:
            out = out[:out.index(tok.eos_token_id)]
        assert row["answer"] == tok.decode(out, skip_special_tokens=True)
        assert (row["instruction"], row["expected"]) == (record["instruction"], record["response"])
    # every step of the same weights answers the same
    assert [r["answer"] for r in items(scored, "number")] == [r["answer"] for r in rows]
    assert [r["answer"] for r in items(scored, "judged")] == [r["answer"] for r in rows]


def test_exact_and_number_scoring_in_the_entry(scored):
    from targets import scoring

    for step, score in (("exact", scoring.exact), ("number", scoring.number)):
        rows = items(scored, step)
        for row in rows:
            s = score(row["answer"], row["expected"])
            assert (row["scoring"], row["passed"], row["verdict"], row["reference"], row["detail"]) == \
                (step, s.passed, None, None, s.detail)
        passed = sum(r["passed"] for r in rows)
        assert scores(scored, step) == {"dataset": "probe", "split": "all", "scoring": step, "items": 4,
                                        "passed": passed, "failed": 4 - passed, "failures": 4 - passed,
                                        "accuracy": passed / 4}
    # the tiny student says no numbers: every number item names why
    assert {r["detail"] for r in items(scored, "number")} <= {
        "no number in the answer; expected 4", "no number in the record's response"} or \
        all(r["detail"].startswith("answer ") for r in items(scored, "number") if r["detail"])


def test_python_scoring_runs_the_tests_in_the_sandbox(scored):
    from targets import scoring

    rows = items(scored, "python")
    assert [r["expected"] for r in rows] == [r["response"].strip() for r in CODE]  # as the dataset keeps them
    for row in rows:
        assert row["passed"] is False and row["detail"] == scoring.python(row["answer"], row["expected"], 5, 1024)[0].detail
    m = scores(scored, "python")
    assert (m["items"], m["passed"], m["failed"], m["failures"]) == (2, 0, 2, 2)
    assert len(m["sandbox"]) == 1 and m["sandbox"][0].endswith("audit hook")


def test_the_judge_compares_with_the_reference_models_answers(scored, server):
    """Reference answers are what the server answers to each instruction (asked again here,
    directly); every verdict of the constrained judge parses; the counts add up."""
    import httpx2

    rows = items(scored, "judged")
    assert all(list(r) == CONTRACT and r["scoring"] == "judge" and r["passed"] is None for r in rows)
    for row, record in zip(rows, PROBE):
        reply = httpx2.post(server.url + "/chat/completions", timeout=60, json={
            "model": "tiny-reference", "messages": [{"role": "user", "content": record["instruction"]}],
            "temperature": 0, "max_tokens": 16}).json()
        assert row["reference"] == reply["choices"][0]["message"]["content"]
        assert row["verdict"] in ("win", "loss", "tie")
    m = scores(scored, "judged")
    verdicts = [r["verdict"] for r in rows]
    assert m == {"dataset": "probe", "split": "all", "scoring": "judge", "items": 4,
                 "wins": verdicts.count("win"), "losses": verdicts.count("loss"), "ties": verdicts.count("tie"),
                 "unparseable": 0, "failures": verdicts.count("loss") + verdicts.count("tie"),
                 "accuracy": verdicts.count("win") / 4,
                 "cache": {"reference": {"hits": 0, "misses": 4}, "judge": {"hits": 0, "misses": 4}},
                 "retries": {"reference": 0, "judge": 0}}
    assert scored.requests["judged"] == 8  # four reference answers, four verdicts


def test_judging_another_model_asks_the_reference_nothing(scored):
    m = scores(scored, "rejudged")
    assert m["cache"]["reference"] == {"hits": 4, "misses": 0}
    assert scored.requests["rejudged"] == m["cache"]["judge"]["misses"]  # the server saw only verdicts
    assert [r["reference"] for r in items(scored, "rejudged")] == [r["reference"] for r in items(scored, "judged")]
    assert [r["answer"] for r in items(scored, "rejudged")] != [r["answer"] for r in items(scored, "judged")]
    # the same answers (another key, the same weights): nothing is asked at all
    assert scores(scored, "again")["cache"] == {"reference": {"hits": 4, "misses": 0}, "judge": {"hits": 4, "misses": 0}}
    assert scored.requests["again"] == 0
    assert [r["verdict"] for r in items(scored, "again")] == [r["verdict"] for r in items(scored, "judged")]
