"""Evaluating the shot counts of one (model, dataset): :func:`evaluate` (cached ones copied, the rest run
through ``lm_eval.simple_evaluate(model=lm, tasks=[task], num_fewshot=k)``, one call per shot count) and the
record of each.

Truncation guard
    lm-eval silently left-truncates prompts that do not fit ``max_length - max_gen_toks``. Before any
    generation, every prompt of a shot count is rendered by the task itself (``fewshot_context``, exactly
    what lm-eval sends), checked against the official construction, and tokenized with the engine's own
    ``tok_encode`` (BOS included, as the engine adds it). A prompt with more than ``max_prompt_tokens``
    tokens is refused and counted (``n_refused``), never sent: only the fitting instances are evaluated,
    through ``simple_evaluate(samples={task: indices})``. After generation, the prompts lm-eval logged are
    compared with the checked ones, so a prompt that was not checked can never be scored.
    ``max_prompt_tokens = max_length - max_new_tokens`` (and at most what the engine's positions reach,
    :attr:`~ctxscale.evaluate.engine.Engine.position_limit`). When every instance of a shot count is refused,
    the file is still written with ``score`` and ``n_pmt`` null and ``n_instances`` 0;
    :mod:`ctxscale.aggregate` skips such cells.

The record's metadata: versions of lm-eval, torch, transformers, vLLM, the engine (``backend``), batch size,
seeds, max_length, dataset and model fingerprints and revision, the cache key, elapsed seconds, and the
prefix cache's counters per shot count (``metadata.prefix_cache``; null for an engine without one).
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxscale.datasets.prepared import PreparedData, build_prompt, read_prepared, shots_for
from ctxscale.errors import UserError
from ctxscale.evaluate.cache import (
    RESULT_FORMAT_VERSION,
    ResultCache,
    result_json_bytes,
    result_paths,
    samples_gzip_bytes,
)
from ctxscale.evaluate.engine import Engine, prefix_cache_delta
from ctxscale.evaluate.engines import SharedEngine, build_engine
from ctxscale.evaluate.fingerprint import (
    RECORDED_VERSIONS,
    cache_key,
    code_fingerprint,
    data_fingerprint,
    model_fingerprint,
)
from ctxscale.evaluate.settings import Settings
from ctxscale.provenance import package_versions
from ctxscale.lm_eval_tasks import write_task

log = logging.getLogger("ctxscale.evaluate")


@dataclass
class RunContext:
    """What every shot count of one (model, dataset) job shares."""

    model_name: str
    model_dir: Path
    prepared: PreparedData
    test_rows: list[dict]
    settings: Settings
    cache: ResultCache
    out_dir: Path
    model_fp: str
    data_fp: str
    versions: dict


def evaluate(
    *,
    model_dir: str | Path,
    model_name: str,
    data_dir: str | Path,
    shots: list[int],
    out_dir: str | Path,
    cache_dir: str | Path,
    settings: dict[str, Any] | Settings | None = None,
    engine: Engine | SharedEngine | None = None,
) -> list[Path]:
    """Evaluate every shot count (cached ones are copied); returns the result files in ``shots`` order.

    ``engine`` lets a caller reuse an already loaded model (tests, benchmarks) or share one across datasets
    (:class:`~ctxscale.evaluate.engines.SharedEngine`); by default it is built here, once, and only if some shot
    count is not cached.
    """
    settings = settings if isinstance(settings, Settings) else Settings.from_mapping(settings)
    if not model_name or "/" in model_name:
        raise UserError(f"model name {model_name!r} must be non-empty and contain no '/'")
    if not shots:
        raise UserError("no shot counts given")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in shots):
        raise UserError(f"shot counts must be non-negative integers, got {shots}")
    if len(set(shots)) != len(shots):
        raise UserError(f"shot counts repeat: {shots}")
    model_dir = Path(model_dir).resolve()
    if not model_dir.is_dir():
        raise UserError(f"model directory {model_dir} does not exist")
    prepared = read_prepared(data_dir)
    manifest = prepared.manifest
    if max(shots) > len(prepared.shots):
        raise UserError(
            f"dataset {manifest['dataset']} has {len(prepared.shots)} shots in its pool, fewer than the "
            f"{max(shots)} requested"
        )
    if settings.max_length <= manifest["max_new_tokens"]:
        raise UserError(
            f"max_length {settings.max_length} leaves no room for {manifest['max_new_tokens']} generated tokens"
        )

    started = time.perf_counter()
    run = RunContext(
        model_name=model_name,
        model_dir=model_dir,
        prepared=prepared,
        test_rows=prepared.test[: settings.max_samples] if settings.max_samples else prepared.test,
        settings=settings,
        cache=ResultCache(cache_dir),
        out_dir=Path(out_dir),
        model_fp=model_fingerprint(model_dir),
        data_fp=data_fingerprint(prepared),
        versions=package_versions(RECORDED_VERSIONS),
    )
    code_fp = code_fingerprint()
    keys = {
        k: cache_key(
            model_name=model_name,
            model_fp=run.model_fp,
            data_fp=run.data_fp,
            n_shots=k,
            settings=settings,
            versions=run.versions,
            code_fp=code_fp,
        )
        for k in shots
    }
    cached = [k for k in shots if run.cache.lookup(keys[k])]
    log.info(
        "%s on %s: reused %d of %d shot counts from the cache (fingerprints took %.1f s)",
        model_name,
        manifest["dataset"],
        len(cached),
        len(shots),
        time.perf_counter() - started,
    )
    for k in cached:
        run.cache.copy_out(keys[k], run.out_dir, k)
    pending = [k for k in shots if k not in cached]
    if pending:
        if engine is None:
            engine = build_engine(model_dir, settings, manifest["max_new_tokens"])
        elif isinstance(engine, SharedEngine):
            if engine.settings != settings or engine.model_dir != model_dir:
                raise ValueError("the shared engine was made for another model or other settings")
            engine = engine.get(manifest["max_new_tokens"])
        elif not engine.built_for(settings):
            raise ValueError("the given engine was built with another max_length or batch_size than the settings")
        elif engine.name != settings.backend:
            raise ValueError(f"the given engine is {engine.name}, the settings ask for {settings.backend}")
        _evaluate_pending(run, engine, {k: keys[k] for k in pending})
    return [result_paths(run.out_dir, k)[0] for k in shots]


def _evaluate_pending(run: RunContext, engine: Engine, keys: dict[int, str]) -> None:
    """Evaluate the shot counts not in the cache, storing each in the cache as soon as it is done."""
    manifest = run.prepared.manifest
    max_new_tokens = int(manifest["max_new_tokens"])
    max_prompt_tokens = min(filter(None, [run.settings.max_length, engine.position_limit])) - max_new_tokens
    with tempfile.TemporaryDirectory(prefix="ctxscale-tasks-") as task_dir:
        task_files = write_task(run.prepared, task_dir)
        task = _task_manager(task_files.directory).load([task_files.name])["tasks"][task_files.name]
        docs = list(task.eval_docs)[: len(run.test_rows)]
        if [doc["id"] for doc in docs] != [row["id"] for row in run.test_rows]:
            raise RuntimeError("lm-eval loaded the test documents in a different order than test.jsonl")
        for n_shots, key in keys.items():
            started = time.perf_counter()
            counters_before = engine.prefix_cache_tokens()
            prompts = _render_prompts(task, docs, n_shots)
            _check_official(run, prompts, n_shots)
            result, samples = run_shot_count(
                engine=engine,
                task_dir=task_files.directory,
                task_name=task_files.name,
                prepared=run.prepared,
                test_rows=run.test_rows,
                prompts=prompts,
                n_shots=n_shots,
                max_prompt_tokens=max_prompt_tokens,
                settings=run.settings,
            )
            elapsed = time.perf_counter() - started
            result["model"] = run.model_name
            result["metadata"] = _metadata(run, engine, max_prompt_tokens, key, elapsed)
            result["metadata"]["prefix_cache"] = prefix_cache_delta(counters_before, engine.prefix_cache_tokens())
            run.cache.store(key, result_json_bytes(result), samples_gzip_bytes(samples))
            run.cache.copy_out(key, run.out_dir, n_shots)
            log.info(
                "k=%d instances=%d refused=%d score=%s n_pmt=%s seconds=%.1f",
                n_shots,
                result["n_instances"],
                result["n_refused"],
                "n/a" if result["score"] is None else f"{result['score']:.4f}",
                "n/a" if result["n_pmt"] is None else f"{result['n_pmt']:.1f}",
                elapsed,
            )


def _check_official(run: RunContext, prompts: list[str], n_shots: int) -> None:
    """Every prompt lm-eval renders must equal the official construction (spec §4.4)."""
    manifest = run.prepared.manifest
    for row, prompt in zip(run.test_rows, prompts, strict=True):
        shots = shots_for(manifest, run.prepared.shots, row["id"], n_shots)
        if prompt != build_prompt(manifest["prefix"], manifest["suffix"], manifest["separator"], shots, row["input"]):
            raise RuntimeError(f"lm-eval renders {row['id']} at {n_shots} shots unlike the official construction")


def _metadata(run: RunContext, engine: Engine, max_prompt_tokens: int, key: str, elapsed: float) -> dict:
    settings, manifest = run.settings, run.prepared.manifest
    return {
        "result_format": RESULT_FORMAT_VERSION,
        "backend": engine.name,
        "batch_size": engine.batch_size_record(settings),
        "max_length": settings.max_length,
        "max_new_tokens": manifest["max_new_tokens"],
        "max_prompt_tokens": max_prompt_tokens,
        "beyond_context": engine.beyond_context,
        "backend_details": engine.details,
        "seeds": {name: settings.seed for name in ("python", "numpy", "torch", "fewshot")},
        "settings": settings.as_dict(),
        "versions": run.versions,
        "model": {"dir": str(run.model_dir), "revision": settings.revision, "fingerprint": run.model_fp},
        "data": {
            "dir": str(run.prepared.directory),
            "fingerprint": run.data_fp,
            "seeds": manifest.get("seeds"),
            "source": manifest.get("source"),
            "tokenizer": manifest.get("tokenizer"),
        },
        "cache_key": key,
        "elapsed_seconds": round(elapsed, 3),
    }


def _task_manager(task_dir: Path):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir), include_defaults=False)


def _render_prompts(task: Any, docs: list[dict], n_shots: int) -> list[str]:
    """The contexts lm-eval builds for these docs at n shots (same call as ``build_all_requests``)."""
    return [task.fewshot_context(doc, n_shots, gen_prefix=task.doc_to_prefix(doc)) for doc in docs]


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


@contextlib.contextmanager
def _without_lm_eval_environment_probe():
    """``simple_evaluate`` ends by probing the machine for its results file: torch's ``collect_env`` (77
    subprocesses such as ``pip list``, about 0.8 s a call, once per shot count) and git's commit hash. The
    evaluation record carries its own versions (ctxscale.provenance) and reads nothing of that probe, so
    the probe is skipped while this step calls lm-eval."""
    import lm_eval.evaluator as evaluator

    saved = evaluator.add_env_info, evaluator.get_git_commit_hash
    evaluator.add_env_info, evaluator.get_git_commit_hash = (lambda results: None), (lambda: None)
    try:
        yield
    finally:
        evaluator.add_env_info, evaluator.get_git_commit_hash = saved


def run_shot_count(
    *,
    engine: Engine,
    task_dir: Path,
    task_name: str,
    prepared: PreparedData,
    test_rows: list[dict],
    prompts: list[str],
    n_shots: int,
    max_prompt_tokens: int,
    settings: Settings,
) -> tuple[dict, list[dict]]:
    """Guard, generate and score one shot count. Returns (result without metadata, lm-eval samples)."""
    import lm_eval

    manifest = prepared.manifest
    token_counts = engine.count_prompt_tokens(prompts)
    fitting = [index for index, count in enumerate(token_counts) if count <= max_prompt_tokens]
    refused = [
        {"id": test_rows[index]["id"], "prompt_tokens": token_counts[index]}
        for index in range(len(test_rows))
        if token_counts[index] > max_prompt_tokens
    ]
    samples: list[dict] = []
    instances: list[dict] = []
    if fitting:  # an empty samples list would make lm-eval evaluate every document
        with _without_lm_eval_environment_probe():
            results = lm_eval.simple_evaluate(
                model=engine.lm,
                tasks=[task_name],
                num_fewshot=n_shots,
                batch_size=settings.batch_size,
                samples={task_name: fitting},
                task_manager=_task_manager(task_dir),
                bootstrap_iters=0,
                log_samples=True,
                random_seed=settings.seed,
                numpy_random_seed=settings.seed,
                torch_random_seed=settings.seed,
                fewshot_random_seed=settings.seed,
            )
        samples = sorted(results["samples"][task_name], key=lambda sample: sample["doc_id"])
        if [sample["doc_id"] for sample in samples] != fitting:
            raise RuntimeError(f"lm-eval returned documents {[s['doc_id'] for s in samples]}, expected {fitting}")
        metric = manifest["metric"]
        for sample in samples:
            index = sample["doc_id"]
            sent = sample["arguments"][0][0]
            if sent != prompts[index]:
                raise RuntimeError(f"lm-eval sent a prompt for document {index} that differs from the checked one")
            prediction = sample["filtered_resps"][0]
            instances.append(
                {
                    "id": test_rows[index]["id"],
                    "prompt_tokens": token_counts[index],
                    "prediction": prediction,
                    "score": float(sample[metric]),
                }
            )
            sample["prompt_tokens"] = token_counts[index]
        harness_score = results["results"][task_name][f"{metric},none"]
        own_score = _mean([instance["score"] for instance in instances])
        if not math.isclose(harness_score, own_score, rel_tol=1e-9, abs_tol=1e-12):
            raise RuntimeError(f"lm-eval's mean {harness_score} differs from the per-instance mean {own_score}")
    result = {
        "model": None,
        "dataset": manifest["dataset"],
        "task": manifest["task"],
        "n_shots": n_shots,
        "score": _mean([instance["score"] for instance in instances]),
        "n_pmt": _mean([float(instance["prompt_tokens"]) for instance in instances]),
        "n_instances": len(instances),
        "n_refused": len(refused),
        "instances": instances,
        "refused": refused,
    }
    return result, samples
