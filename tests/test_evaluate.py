"""The evaluation path through the real lm-eval on CPU with a tiny random Llama (ctxscale.tiny)."""

import contextlib
import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from letter_task import letter_manifest

from ctxscale.evaluate import cli, engines, fingerprint, runner
from ctxscale.evaluate.engines import build_engine
from ctxscale.evaluate.settings import Settings
from ctxscale.evaluate.vllm_engine import VllmRopePlan, vllm_rope_plan
from ctxscale.aggregate import aggregate
from ctxscale.datasets.prepared import write_prepared
from ctxscale.errors import UserError
from ctxscale.metrics import mc_match
from ctxscale.tiny import build_tokenizer, init_model, save_checkpoint

N_CTX = 64  # the model's own limit; longer prompts are evaluated (penalty region)
MAX_NEW_TOKENS = 3
SHOTS = [0, 1, 3, 5]
MANIFEST = letter_manifest("toy-qa", max_new_tokens=MAX_NEW_TOKENS, shots_seed=31337)
POOL = [{"input": f"Pick the letter {letter}: A B C D?", "reference": letter} for letter in "ABCDA"]
TEST_ROWS = [
    {"id": "t0", "input": "Pick the letter B: A B C D?", "reference": "B"},
    {"id": "t1", "input": "Pick the letter C: A B C D?", "reference": "C"},
    {"id": "t2", "input": "Pick the letter D after a rather long preamble about letters: A B C D?", "reference": "D"},
    {"id": "t3", "input": "Pick the letter A: A B C D?", "reference": "A"},
]


def official(n: int, query: str) -> str:
    """Spec §4.4, independently of the library."""
    p, s, sep = MANIFEST["prefix"], MANIFEST["suffix"], MANIFEST["separator"]
    return "".join(p + shot["input"] + s + shot["reference"] + sep for shot in POOL[:n]) + (p + query + s).rstrip()


TOKENIZER = build_tokenizer()


def token_count(text: str) -> int:
    return len(TOKENIZER(text).input_ids)  # BOS included, as the backend adds it


# The window: at 3 shots the long instance t2 no longer fits, at 5 shots nothing does.
MAX_LENGTH = max(token_count(official(3, row["input"])) for row in TEST_ROWS if row["id"] != "t2") + MAX_NEW_TOKENS
# Plain HFLM in batches (tests/test_prefix_reuse.py covers the prefix-reusing class against it).
SETTINGS = {"backend": "hf", "device": "cpu", "dtype": "float32", "batch_size": 2, "max_length": MAX_LENGTH,
            "seed": 31337, "revision": "main", "n_ctx": N_CTX, "prefix_reuse": False}


@contextlib.contextmanager
def captured_log():
    messages = []
    handler = logging.Handler(level=logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("ctxscale.evaluate")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    model = init_model(TOKENIZER, hidden_size=32, num_layers=2, num_heads=4, n_ctx=N_CTX, seed=0)
    save_checkpoint(model, TOKENIZER, root / "model")
    write_prepared(root / "data", POOL, TEST_ROWS, MANIFEST)
    return root


@pytest.fixture(scope="module")
def engine(workspace):
    return build_engine(workspace / "model", Settings.from_mapping(SETTINGS), MAX_NEW_TOKENS)


def run(workspace, engine, name, cache="cache", shots=SHOTS, **settings):
    with captured_log() as messages:
        runner.evaluate(model_dir=workspace / "model", model_name="tiny", data_dir=workspace / "data", shots=shots,
                        out_dir=workspace / name, cache_dir=workspace / cache, settings=SETTINGS | settings,
                        engine=engine)
    return messages


@pytest.fixture(scope="module")
def first_run(workspace, engine):
    messages = run(workspace, engine, "out")
    return workspace / "out", messages


def load(out_dir, k):
    return json.loads((out_dir / f"shots_{k}.json").read_text())


def load_samples(out_dir, k):
    with gzip.open(out_dir / f"shots_{k}.samples.jsonl.gz", "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def without_timing(result):
    result = json.loads(json.dumps(result))
    del result["metadata"]["elapsed_seconds"]
    return result


def test_every_shot_count_is_written(first_run):
    out_dir, messages = first_run
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [f"shots_{k}.json" for k in SHOTS] + [f"shots_{k}.samples.jsonl.gz" for k in SHOTS]
    )
    for k in SHOTS:
        result = load(out_dir, k)
        names = (result["model"], result["dataset"], result["task"], result["n_shots"])
        assert names == ("tiny", "toy-qa", "common-sense", k)
        assert result["n_instances"] + result["n_refused"] == len(TEST_ROWS)
        meta = result["metadata"]
        assert meta["backend"] == "hf" and meta["batch_size"] == 2 and meta["max_length"] == MAX_LENGTH
        assert meta["seeds"] == {"python": 31337, "numpy": 31337, "torch": 31337, "fewshot": 31337}
        assert meta["versions"]["lm_eval"] == "0.4.13"
        assert meta["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
        assert meta["beyond_context"].startswith("transformers computes RoPE on the fly")
        assert meta["model"]["revision"] == "main" and len(meta["model"]["fingerprint"]) == 64
        assert len(meta["data"]["fingerprint"]) == 64
    assert messages[0].startswith("tiny on toy-qa: reused 0 of 4 shot counts from the cache")
    progress = [m for m in messages if m.startswith("k=")]
    assert [m.split()[0] for m in progress] == ["k=0", "k=1", "k=3", "k=5"]
    assert "instances=3 refused=1" in progress[2] and "seconds=" in progress[2]


def test_token_counts_equal_an_independent_tokenization(first_run):
    out_dir, _ = first_run
    for k in SHOTS:
        result = load(out_dir, k)
        by_id = {row["id"]: row for row in TEST_ROWS}
        for entry in result["instances"] + result["refused"]:
            assert entry["prompt_tokens"] == token_count(official(k, by_id[entry["id"]]["input"])), (k, entry["id"])
        counts = [i["prompt_tokens"] for i in result["instances"]]
        if counts:
            assert result["n_pmt"] == pytest.approx(sum(counts) / len(counts), rel=1e-12)


def test_truncation_guard_refuses_and_counts(first_run):
    out_dir, _ = first_run
    limit = MAX_LENGTH - MAX_NEW_TOKENS
    assert load(out_dir, 0)["n_refused"] == 0
    three = load(out_dir, 3)
    assert three["n_refused"] == 1 and [r["id"] for r in three["refused"]] == ["t2"]
    assert three["refused"][0]["prompt_tokens"] > limit
    assert [i["id"] for i in three["instances"]] == ["t0", "t1", "t3"]
    assert [s["doc"]["id"] for s in load_samples(out_dir, 3)] == ["t0", "t1", "t3"]  # never sent
    five = load(out_dir, 5)  # nothing fits: the file still exists, with no score
    assert (five["n_instances"], five["n_refused"], five["score"], five["n_pmt"]) == (0, 4, None, None)
    assert load_samples(out_dir, 5) == []
    for k in SHOTS:
        assert all(i["prompt_tokens"] <= limit for i in load(out_dir, k)["instances"])


def test_prompts_are_official_and_shots_nest(first_run):
    out_dir, _ = first_run
    prompts = {}
    for k in (0, 1, 3):
        for sample in load_samples(out_dir, k):
            context = sample["arguments"][0][0]
            assert context == official(k, sample["doc"]["input"])
            prompts[k, sample["doc"]["id"]] = context
    query = (MANIFEST["prefix"] + TEST_ROWS[0]["input"] + MANIFEST["suffix"]).rstrip()
    block_1 = prompts[1, "t0"][: -len(query)]
    block_3 = prompts[3, "t0"][: -len(query)]
    assert block_3.startswith(block_1) and len(block_3) > len(block_1)
    assert prompts[3, "t0"][: len(block_3)] == prompts[3, "t1"][: len(block_3)]  # one shared shot block


def test_scores_are_the_metric_of_the_predictions(first_run):
    out_dir, _ = first_run
    references = {row["id"]: row["reference"] for row in TEST_ROWS}
    beyond_n_ctx = 0
    for k in (0, 1, 3):
        result = load(out_dir, k)
        for instance in result["instances"]:
            assert isinstance(instance["prediction"], str)
            assert instance["score"] == mc_match(instance["prediction"], references[instance["id"]])
            beyond_n_ctx += instance["prompt_tokens"] > N_CTX
        scores = [i["score"] for i in result["instances"]]
        assert result["score"] == pytest.approx(sum(scores) / len(scores))
    assert beyond_n_ctx >= 3  # prompts past the model's own limit are evaluated, not refused


def test_a_second_run_is_identical(workspace, engine, first_run):
    out_dir, _ = first_run
    messages = run(workspace, engine, "out-fresh", cache="cache-fresh")
    assert "reused 0 of 4" in messages[0]
    for k in SHOTS:
        assert without_timing(load(workspace / "out-fresh", k)) == without_timing(load(out_dir, k))
        assert (workspace / "out-fresh" / f"shots_{k}.samples.jsonl.gz").read_bytes() == (
            out_dir / f"shots_{k}.samples.jsonl.gz"
        ).read_bytes()


def test_rerun_copies_cached_shot_counts_without_loading_the_model(workspace, first_run, monkeypatch):
    out_dir, _ = first_run

    def no_loading(*args, **kwargs):
        raise AssertionError("the model must not be loaded when every shot count is cached")

    monkeypatch.setattr(runner, "build_engine", no_loading)
    messages = run(workspace, None, "out-copy")
    assert "reused 4 of 4" in messages[0]
    for k in SHOTS:
        for name in (f"shots_{k}.json", f"shots_{k}.samples.jsonl.gz"):
            assert (workspace / "out-copy" / name).read_bytes() == (out_dir / name).read_bytes()


def test_interrupted_job_keeps_finished_shot_counts(workspace, engine, first_run, monkeypatch):
    out_dir, _ = first_run
    real_generate = engine.lm.generate_until
    calls = []

    def out_of_memory_at_second_shot_count(requests, disable_tqdm=False):
        calls.append(len(requests))
        if len(calls) == 2:
            raise torch.OutOfMemoryError("simulated out of memory at 1 shot")
        return real_generate(requests, disable_tqdm)

    monkeypatch.setattr(engine.lm, "generate_until", out_of_memory_at_second_shot_count)
    with pytest.raises(torch.OutOfMemoryError):
        run(workspace, engine, "out-interrupted", cache="cache-interrupted")
    monkeypatch.undo()
    written = sorted(p.name for p in (workspace / "out-interrupted").iterdir())
    assert written == ["shots_0.json", "shots_0.samples.jsonl.gz"]
    cached = sorted((workspace / "cache-interrupted").glob("*/*/result.json"))
    assert len(cached) == 1
    cached_mtime = cached[0].stat().st_mtime_ns
    output_mtime = (workspace / "out-interrupted" / "shots_0.json").stat().st_mtime_ns

    shutil.rmtree(workspace / "out-interrupted")  # Snakemake deletes the outputs before rerunning
    messages = run(workspace, engine, "out-interrupted", cache="cache-interrupted")
    assert "reused 1 of 4" in messages[0]
    assert [m.split()[0] for m in messages if m.startswith("k=")] == ["k=1", "k=3", "k=5"]
    assert cached[0].stat().st_mtime_ns == cached_mtime  # the finished shot count was not recomputed
    assert (workspace / "out-interrupted" / "shots_0.json").stat().st_mtime_ns >= output_mtime
    for k in SHOTS:
        assert without_timing(load(workspace / "out-interrupted", k)) == without_timing(load(out_dir, k))


def test_cache_key_follows_results_affecting_settings(workspace, engine, first_run):
    messages = run(workspace, engine, "out-subset", shots=[0], max_samples=2)
    assert "reused 0 of 1" in messages[0]  # another instance set is another result
    subset = [(i["id"], i["prompt_tokens"]) for i in load(workspace / "out-subset", 0)["instances"]]
    assert subset == [(i["id"], i["prompt_tokens"]) for i in load(first_run[0], 0)["instances"][:2]]
    messages = run(workspace, engine, "out-gpu-util", shots=[0], gpu_memory_utilization=0.5)
    assert "reused 1 of 1" in messages[0]  # memory headroom does not change results


def test_aggregation_of_real_results(workspace, first_run):
    out_dir, _ = first_run
    info = workspace / "tiny.json"
    info.write_text(json.dumps({"model": "tiny", "n_ctx": N_CTX, "compute": 1.0e15}))
    per_dataset, per_task = aggregate([out_dir], [info], workspace / "obs.csv", workspace / "by_task.csv")
    assert per_dataset["n_shots"].tolist() == [0, 1, 3]  # the 5-shot cell has no evaluated instance
    assert per_dataset["n_instances"].tolist() == [4, 4, 3]
    assert per_dataset["n_refused"].tolist() == [0, 0, 1]
    for row in per_dataset.itertuples():
        result = load(out_dir, row.n_shots)
        assert (row.score, row.n_pmt, row.n_ctx, row.compute) == (result["score"], result["n_pmt"], N_CTX, 1.0e15)
    assert per_task["score"].tolist() == per_dataset["score"].tolist()  # one dataset: the task mean is itself


def test_command_line_run(workspace, first_run):
    out_dir, _ = first_run
    command = [sys.executable, "-m", "ctxscale.evaluate", "--model-dir", str(workspace / "model"), "--model-name",
               "tiny", "--data-dir", str(workspace / "data"), "--shots", "0", "3", "--out-dir",
               str(workspace / "out-cli"), "--cache-dir", str(workspace / "cache-cli"), "--settings", json.dumps(SETTINGS)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reused 0 of 2 shot counts" in done.stderr
    assert "k=3 instances=3 refused=1" in done.stderr
    for k in (0, 3):
        assert without_timing(load(workspace / "out-cli", k)) == without_timing(load(out_dir, k))


def test_one_job_evaluates_several_datasets_with_one_model_load(workspace, monkeypatch, capsys):
    """evaluation.job_per: model: one process, one model load, the engine sized by the largest plan; every
    instance gets the prediction a job of its own dataset alone gives it."""
    # token profiles (what data preparation records) that give the two datasets different plans, both above
    # their real prompt lengths, so nothing is refused
    first, second = workspace / "data-first", workspace / "data-second"
    for folder, per_shot, query, suffix in ((first, 60, 60, ""), (second, 80, 80, " Answer with one letter.")):
        rows = [dict(row, id=f"{folder.name}-{i}", input=row["input"] + suffix) for i, row in enumerate(TEST_ROWS)]
        manifest = letter_manifest(folder.name, max_new_tokens=MAX_NEW_TOKENS, shots_seed=31337)
        manifest["prompt_tokens"] = {"shot_block": [per_shot * k for k in range(len(POOL) + 1)], "max_query": query,
                                     "bos": 1}  # fmt: skip
        write_prepared(folder, POOL, rows, manifest)
    builds = []
    real_build = engines.build_engine

    def counting_build(*args, **kwargs):
        builds.append(args[0])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(engines, "build_engine", counting_build)
    common = ["--model-dir", str(workspace / "model"), "--model-name", "tiny", "--shots", "0", "3", "--plan",
              "--settings", json.dumps(SETTINGS | {"max_length": 4096})]
    outs = [workspace / "grouped" / "first", workspace / "grouped" / "second"]
    code = cli.main([*common, "--data-dir", str(first), str(second), "--out-dir", *map(str, outs),
                    "--cache-dir", str(workspace / "cache-grouped")])  # fmt: skip
    assert code == 0 and len(builds) == 1
    alone_lengths = []
    for data_dir, out in zip((first, second), outs):
        alone = workspace / "alone" / out.name
        assert cli.main([*common, "--data-dir", str(data_dir), "--out-dir", str(alone),
                        "--cache-dir", str(workspace / "cache-alone")]) == 0  # fmt: skip
        for k in (0, 3):
            grouped_result, alone_result = load(out, k), load(alone, k)
            assert grouped_result["n_refused"] == alone_result["n_refused"] == 0
            assert grouped_result["instances"] == alone_result["instances"]
            assert grouped_result["score"] == alone_result["score"]
            alone_lengths.append(alone_result["metadata"]["max_length"])
    # each dataset alone gets its own plan (the second's prompts are longer); together, the larger of the two
    assert len(set(alone_lengths)) == 2
    for out in outs:
        assert {load(out, k)["metadata"]["max_length"] for k in (0, 3)} == {max(alone_lengths)}
    assert len(builds) == 3  # one more load per single-dataset job
    capsys.readouterr()
    mismatched = [*common, "--data-dir", str(first), str(second), "--out-dir", str(outs[0]),
                  "--cache-dir", str(workspace / "cache-grouped")]
    assert cli.main(mismatched) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 2 --data-dir folder(s) but 1 --out-dir folder(s)") and "Traceback" not in err


def test_user_mistakes_exit_2_with_one_line(workspace, capsys):
    base = ["--model-dir", str(workspace / "model"), "--model-name", "tiny", "--data-dir", str(workspace / "data"),
            "--out-dir", str(workspace / "out-err"), "--cache-dir", str(workspace / "cache-err")]
    cases = [
        (["--shots", "0", "--settings", "{not json"], "--settings is not valid JSON"),
        (["--shots", "0", "--settings", '{"batch_size": "auto"}'], "batch_size must be a positive integer"),
        (["--shots", "0", "--settings", '{"batchsize": 8}'], "unknown evaluation setting 'batchsize'"),
        (["--shots", "9", "--settings", json.dumps(SETTINGS)], "has 5 shots in its pool, fewer than the 9 requested"),
        (["--shots", "0", "--settings", json.dumps(SETTINGS | {"max_length": 3})], "leaves no room for 3 generated"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--shots", "0", "--settings", json.dumps(SETTINGS | {"device": "cuda"})], "torch has no CUDA"))
    try:
        import vllm  # noqa: F401
    except ImportError:
        cases.append((["--shots", "0", "--settings", json.dumps(SETTINGS | {"backend": "vllm", "tensor_parallel_size": 1})],
                      "needs the vllm package"))
    for extra, message in cases:
        assert cli.main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    missing = ["--model-dir", str(workspace / "model"), "--model-name", "tiny", "--data-dir", str(workspace / "none"),
               "--shots", "0", "--out-dir", str(workspace / "o"), "--cache-dir", str(workspace / "c")]
    assert cli.main(missing) == 2
    assert "not a prepared dataset" in capsys.readouterr().err


def test_vllm_rope_plan():
    plain = {"max_position_embeddings": 4096, "rope_theta": 10000.0}
    # Plain RoPE: the table is lengthened to the window through hf_overrides, nothing is refused.
    assert vllm_rope_plan(plain, None, 131072) == VllmRopePlan({"max_position_embeddings": 131072}, None, None)
    yarn = {"factor": 2.0, "original_max_position_embeddings": 4096}
    yarn_checkpoint = plain | {"max_position_embeddings": 8192, "rope_scaling": {"type": "yarn", **yarn}}
    # YaRN: the table ends at original * factor = 8192; ctxscale.evaluate.vllm_rope lengthens it to the window.
    assert vllm_rope_plan(yarn_checkpoint, None, 131072) == VllmRopePlan({}, None, 131072)
    assert vllm_rope_plan(yarn_checkpoint, None, 8192) == VllmRopePlan({}, None, None)  # long enough
    plan = vllm_rope_plan(plain, {"rope_type": "yarn", **yarn, "factor": 4.0}, 131072)
    rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 4096}
    assert plan == VllmRopePlan({"rope_parameters": rope}, None, 131072)
    plan = vllm_rope_plan(plain, {"type": "linear", "factor": 2.0}, 32768)
    rope = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    assert plan == VllmRopePlan({"rope_parameters": rope, "max_position_embeddings": 32768}, None, None)
    # Other scalings (llama3, dynamic, ...) are not extended: prompts past the table are refused.
    plan = vllm_rope_plan(plain, {"rope_type": "llama3", "factor": 8.0}, 32768)
    assert plan.position_limit == 4096 and plan.yarn_table_positions is None


def test_hf_engine_applies_rope_scaling(workspace):
    rope = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32}
    settings = Settings.from_mapping(SETTINGS | {"rope_scaling": rope})
    built = build_engine(workspace / "model", settings, MAX_NEW_TOKENS)
    parameters = built.lm.model.config.rope_parameters
    assert {key: parameters[key] for key in rope} == rope
    assert built.lm.max_length == MAX_LENGTH


def test_model_fingerprint_is_content_based(workspace, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(workspace / "model", copy)
    assert fingerprint.model_fingerprint(copy) == fingerprint.model_fingerprint(workspace / "model")
    weights = next(copy.glob("*.safetensors"))
    monkeypatch.setattr(fingerprint, "SMALL_FILE_BYTES", 1024)  # exercise the sampled hashing of large files
    monkeypatch.setattr(fingerprint, "HASH_WINDOW_BYTES", 256)
    sampled = fingerprint.model_fingerprint(copy)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # the last window is always hashed
    weights.write_bytes(bytes(data))
    assert fingerprint.model_fingerprint(copy) != sampled
    with pytest.raises(UserError, match="no config.json"):
        fingerprint.model_fingerprint(tmp_path)


def test_fingerprint_ignores_training_metadata(tmp_path):
    """A bit-identical retrain (different wall time in ctxscale_training.json) keeps the evaluation cache."""
    import json as _json

    from ctxscale.evaluate.fingerprint import model_fingerprint

    (tmp_path / "config.json").write_text(_json.dumps({"model_type": "llama"}))
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "ctxscale_training.json").write_text(_json.dumps({"seconds": 1.0}))
    before = model_fingerprint(tmp_path)
    (tmp_path / "ctxscale_training.json").write_text(_json.dumps({"seconds": 2.0}))
    assert model_fingerprint(tmp_path) == before
    (tmp_path / "model.safetensors").write_bytes(b"weightz")
    assert model_fingerprint(tmp_path) != before


def test_code_fingerprint_locates_every_source_file_without_importing():
    """A package stands for every .py file under it (this step's own package included), a plain module for its
    file; none is imported to be located."""
    import ctxscale

    root = Path(ctxscale.__file__).parent
    assert {"ctxscale.evaluate", "ctxscale.lm_eval_tasks", "ctxscale.metrics", "ctxscale.datasets.prepared"} <= set(
        fingerprint.RESULT_AFFECTING_MODULES)  # fmt: skip
    names = [name for name, _ in fingerprint.code_files("ctxscale.evaluate")]
    assert names == sorted(p.relative_to(root / "evaluate").as_posix() for p in (root / "evaluate").rglob("*.py"))
    assert {"__init__.py", "runner.py", "hf_engine.py", "vllm_engine.py", "vllm_rope.py"} <= set(names)
    assert fingerprint.code_files("ctxscale.metrics") == [("metrics.py", root / "metrics.py")]
    located_only = ("ctxscale.metrics", "ctxscale.evaluate.runner", "ctxscale.evaluate.cli", "torch", "lm_eval")
    done = subprocess.run([sys.executable, "-c", "import sys; from ctxscale.evaluate import fingerprint; "
                           f"fingerprint.code_fingerprint(); print(sorted(set(sys.modules) & set({located_only})))"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.strip() == "[]"


@pytest.fixture
def source_copy(tmp_path, monkeypatch):
    """A copy of the ctxscale sources that the code fingerprint reads instead of the real ones."""
    import ctxscale

    copy = tmp_path / "ctxscale"
    shutil.copytree(Path(ctxscale.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(ctxscale, "__path__", [str(copy)])
    for module in fingerprint.RESULT_AFFECTING_MODULES:  # located anew, under the copy, parent packages too
        parts = module.split(".")
        for depth in range(2, len(parts) + 1):
            monkeypatch.delitem(sys.modules, ".".join(parts[:depth]), raising=False)
    return copy


@pytest.mark.parametrize("module", fingerprint.RESULT_AFFECTING_MODULES)
def test_cache_key_covers_the_code_that_decides_results(module, source_copy):
    """An edit to any file of a module that decides prompts, generations or scores (this step's own package
    included, every file of a package) is a new code fingerprint, hence a new cache key; the same code is the
    same fingerprint."""
    before = fingerprint.code_fingerprint()
    assert fingerprint.code_fingerprint() == before
    files = fingerprint.code_files(module)
    assert all(path.is_relative_to(source_copy) for _, path in files)
    for _, path in files:
        original = path.read_bytes()
        path.write_bytes(original + b"\n# an edit\n")
        assert fingerprint.code_fingerprint() != before, path
        path.write_bytes(original)
    assert fingerprint.code_fingerprint() == before
    if len(files) > 1:  # a package: a new file in a subfolder counts too
        (files[0][1].parent / "sub").mkdir()
        (files[0][1].parent / "sub" / "extra.py").write_text("VALUE = 1\n")
        assert fingerprint.code_fingerprint() != before


def test_each_engine_declares_its_result_affecting_settings():
    """The cache key's settings come from the engine: hf depends on its batch size and device type, vLLM on its
    parallelism and cache layout, and neither on memory headroom."""
    from ctxscale.config import load_schema
    from ctxscale.evaluate.engines import ENGINES
    from ctxscale.evaluate.hf_engine import HfEngine
    from ctxscale.evaluate.vllm_engine import VllmEngine

    assert set(ENGINES) == set(load_schema()["properties"]["evaluation"]["properties"]["backend"]["enum"])
    hf = Settings.from_mapping(SETTINGS | {"device": "cuda:1"})
    assert HfEngine.result_affecting(hf) == {
        "backend": "hf", "max_length": MAX_LENGTH, "batch_size": 2, "dtype": "float32", "device": "cuda",
        "seed": 31337, "max_samples": None, "rope_scaling": None, "revision": "main"}  # fmt: skip
    vllm = Settings.from_mapping(SETTINGS | {"backend": "vllm", "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert VllmEngine.result_affecting(vllm) == {
        "backend": "vllm", "max_length": MAX_LENGTH, "dtype": "float32", "seed": 31337, "max_samples": None,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "revision": "main", "tensor_parallel_size": 1,
        "enable_prefix_caching": True, "block_size": None, "enforce_eager": False}  # fmt: skip
    assert (HfEngine.key_versions, VllmEngine.key_versions) == (
        ("lm_eval", "torch", "transformers"), ("lm_eval", "torch", "transformers", "vllm"))


def test_hf_engine_records_and_counts(engine):
    settings = Settings.from_mapping(SETTINGS)
    assert engine.name == "hf" and engine.batch_size_record(settings) == 2 and engine.prefix_cache_tokens() is None
    assert engine.built_for(settings) and not engine.built_for(Settings.from_mapping(SETTINGS | {"batch_size": 3}))
    prompts = [official(k, row["input"]) for k in (0, 3) for row in TEST_ROWS]
    assert engine.count_prompt_tokens(prompts) == [token_count(prompt) for prompt in prompts]
    assert engine.count_prompt_tokens([]) == []
    engine.close()  # nothing held beyond the interpreter's memory: the engine stays usable
    assert engine.count_prompt_tokens(prompts[:1]) == [token_count(prompts[0])]


def test_a_shot_count_starts_no_subprocess(workspace, engine, monkeypatch):
    """lm-eval's end-of-run environment probe (torch's collect_env: pip list and more, ~0.8 s a shot count; git)
    is skipped: evaluating starts no process at all, and lm-eval's own probe functions are back afterwards."""
    import subprocess as subprocess_module

    import lm_eval.evaluator

    probe = lm_eval.evaluator.add_env_info
    started = []
    real_popen = subprocess_module.Popen

    def popen(*args, **kwargs):
        started.append(args[0] if args else kwargs.get("args"))
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess_module, "Popen", popen)
    run(workspace, engine, "out-no-probe", cache="cache-no-probe", shots=[0, 1])
    assert started == []
    assert lm_eval.evaluator.add_env_info is probe
    assert load(workspace / "out-no-probe", 1)["n_instances"] == 4
