r"""lm-eval task configs generated from prepared data, rendering the official prompts byte for byte.

A prepared data directory (``shots.jsonl``, ``test.jsonl``, ``manifest.json``; see docs/architecture.md)
becomes one lm-eval ``generate_until`` task: a YAML file plus a small generated Python module beside it
(``<task name>.py``) holding the prompt functions, the shot pool and the metric, because lm-eval resolves
``!function module.fn`` relative to the YAML's folder.

How the official construction (paper-spec §4.4, ``utils.py`` of the official repository)::

    "".join(prefix + s.input + suffix + s.reference + separator for s in shots[:n])
        + (prefix + x.input + suffix).rstrip()

is rendered by lm-eval (0.4.13, ``ConfigurableTask.fewshot_context``: per shot
``doc_to_text + target_delimiter + doc_to_target + fewshot_delimiter``, then ``doc_to_text`` of the query)
with:

- ``doc_to_text(doc) = (prefix + doc.input + suffix).rstrip()``, for shots and query alike;
- for shots only (``fewshot_config``), ``doc_to_target(shot) = removed + shot.reference + separator`` with
  ``target_delimiter = fewshot_delimiter = ""``, where ``removed`` is the whitespace the ``rstrip`` took
  off that shot. For most datasets ``removed`` is the suffix's trailing whitespace (``" "`` after
  ``"\nAnswer: "``, nothing after aqua-rat's ``"...\nAnswer:"`` or WMT's empty suffix), i.e. the
  usual ``target_delimiter``; computing it per shot also keeps the prompt exact when an empty suffix
  leaves it to the input text, and keeps a shot with an empty reference whole (lm-eval drops both
  delimiters of a shot whose target is empty, but ``removed + "" + separator`` never is);
- ``fewshot_config: {sampler: first_n, samples: ...}`` over the pre-shuffled pool (``shots.jsonl`` in
  file order), so the n-shot prompt uses the pool's first n rows and shots nest across n. The pool is
  given as ``samples`` rather than a second split because the ``json`` builder of ``datasets`` needs all
  splits of one load to share columns, and shot rows have no id;
- ``num_fewshot`` is never written into the YAML (a YAML ``num_fewshot: 0`` silently blocks the
  ``simple_evaluate(num_fewshot=k)`` override, ecosystem-notes §0.2).

Generation is greedy (``do_sample: false, temperature: 0``) with the manifest's stop strings and
``max_gen_toks = max_new_tokens``. The metric named in the manifest (``mc_match``, ``math_equiv``,
``bleu_4``) comes from :mod:`ctxscale.metrics`; its lm-eval result key is that name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from ctxscale.datasets.prepared import KNOWN_METRICS, PreparedData, instance_shot_order, read_prepared, shot_order_of
from ctxscale.errors import UserError

TASK_NAME_PREFIX = "ctxscale_"
# Bumped whenever the generated YAML or module changes in a way that can change prompts or scores;
# part of the evaluation cache key.
TASK_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TaskFiles:
    """What :func:`write_task` wrote: the lm-eval task name and its files."""

    name: str
    directory: Path
    yaml_path: Path
    module_path: Path


def task_name_for(dataset: str) -> str:
    """The lm-eval task name of a dataset: ``deepmind-math.algebra__linear_1d`` →
    ``ctxscale_deepmind_math_algebra__linear_1d``."""
    return TASK_NAME_PREFIX + re.sub(r"[^A-Za-z0-9_]+", "_", dataset)


def query_text(prefix: str, suffix: str, input_text: str) -> str:
    """lm-eval's ``doc_to_text``: the official query, ``(prefix + input + suffix).rstrip()``."""
    return (prefix + input_text + suffix).rstrip()


def removed_tail(text: str) -> str:
    """The trailing whitespace ``rstrip`` removes from ``text``."""
    return text[len(text.rstrip()):]


def make_doc_to_text(prefix: str, suffix: str) -> Callable[[dict], str]:
    """The ``doc_to_text`` function of a task with this prefix and suffix (shots and query)."""

    def doc_to_text(doc: dict) -> str:
        return query_text(prefix, suffix, doc["input"])

    return doc_to_text


def make_shot_target(prefix: str, suffix: str, separator: str) -> Callable[[dict], str]:
    """The shots' ``doc_to_target``: what follows ``doc_to_text`` in an official shot (see module doc)."""

    def shot_target(doc: dict) -> str:
        return removed_tail(prefix + doc["input"] + suffix) + doc["reference"] + separator

    return shot_target


def make_shot_pool(path: str) -> Callable[[], list[dict]]:
    """The ``fewshot_config.samples`` callable: the shot pool's rows, in file order."""

    def shot_pool() -> list[dict]:
        return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]

    return shot_pool


def make_instance_sampler(seed: int) -> type:
    """The ``fewshot_config.sampler`` of a per-instance shot order (``shot_order`` in the manifest): an
    lm-eval sampler whose n shots for a document are the first n of that document's own order
    (:func:`ctxscale.datasets.prepared.instance_shot_order`, from the seed and the document's id)."""
    from lm_eval.api.samplers import ContextSampler

    class InstanceOrderSampler(ContextSampler):
        def sample(self, n: int, eval_doc: dict | None = None, df=None, **kwargs) -> list[dict]:
            if eval_doc is None:  # lm-eval passes the document when the shot split is the test split
                raise RuntimeError("per-instance shots need the evaluated document")
            pool = self.fewshot_docs()
            return [pool[i] for i in instance_shot_order(seed, eval_doc["id"], len(pool))[:n]]

    return InstanceOrderSampler


def make_pool_docs(shot_pool: Callable[[], list[dict]]) -> Callable[[Any], list[dict]]:
    """``fewshot_config.process_docs`` of a per-instance shot order: the shot pool in place of the split."""

    def pool_docs(_split) -> list[dict]:
        return shot_pool()

    return pool_docs


def make_metric(name: str) -> Callable[..., float]:
    """lm-eval metric ``fn(references=[gold], predictions=[pred])`` from :mod:`ctxscale.metrics`, named ``name``.

    lm-eval keys a custom metric's results by the function's ``__name__``, so the wrapper carries the
    metric's own name (``mc_match``, not ``mc_match_metric``).
    """
    from ctxscale import metrics

    if name not in KNOWN_METRICS:
        raise UserError(f"unknown metric {name!r} (known: {', '.join(KNOWN_METRICS)})")
    implementation = getattr(metrics, f"{name}_metric")

    def metric(references: list, predictions: list) -> float:
        return float(implementation(references=references, predictions=predictions))

    metric.__name__ = metric.__qualname__ = name
    return metric


class _FunctionRef(str):
    """A ``!function module.name`` YAML scalar."""


class _TaskDumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Double quotes keep "\n" and trailing spaces visible in the generated YAML.
    style = '"' if any(ch in value for ch in "\n\t") or value != value.strip() else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_TaskDumper.add_representer(str, _represent_str)
_TaskDumper.add_representer(_FunctionRef, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def task_config(prepared: PreparedData, module_name: str) -> dict[str, Any]:
    """The lm-eval task config (as a dict; ``!function`` values are :class:`_FunctionRef`)."""
    manifest = prepared.manifest
    if shot_order_of(manifest)["kind"] == "per-instance":
        # The sampler needs the document, which lm-eval passes only when the shot split is the test split: the
        # split is named, and process_docs puts the pool in its place.
        shot_source = {"sampler": _FunctionRef(f"{module_name}.InstanceOrderSampler"), "split": "test",
                       "process_docs": _FunctionRef(f"{module_name}.pool_docs")}
    else:
        # The pool comes as samples, not as a second split: datasets' json builder needs every split of one
        # load to share columns, and shot rows have no id.
        shot_source = {"sampler": "first_n", "samples": _FunctionRef(f"{module_name}.shot_pool")}
    return {
        "task": task_name_for(manifest["dataset"]),
        "dataset_path": "json",
        "dataset_name": None,
        # Absolute paths: lm-eval hands data_files to datasets.load_dataset, which resolves against the CWD.
        "dataset_kwargs": {"data_files": {"test": str(prepared.directory / "test.jsonl")}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": _FunctionRef(f"{module_name}.doc_to_text"),
        "doc_to_target": "reference",
        # Shots are rendered by fewshot_config below; these two only document the query side.
        "target_delimiter": "",
        "fewshot_delimiter": manifest["separator"],
        "fewshot_config": {
            **shot_source,
            "doc_to_target": _FunctionRef(f"{module_name}.shot_target"),
            "target_delimiter": "",
            "fewshot_delimiter": "",
        },
        "generation_kwargs": {
            "until": list(manifest["stop"]),
            "max_gen_toks": int(manifest["max_new_tokens"]),
            "do_sample": False,
            "temperature": 0.0,
        },
        "metric_list": [
            {
                "metric": _FunctionRef(f"{module_name}.{manifest['metric']}"),
                "aggregation": "mean",
                "higher_is_better": True,
            }
        ],
        "metadata": {"version": TASK_FORMAT_VERSION, "dataset": manifest["dataset"]},
    }


def write_task(data_dir: str | Path | PreparedData, out_dir: str | Path) -> TaskFiles:
    """Write the lm-eval task of a prepared data directory into ``out_dir`` (created if needed).

    Point ``lm_eval.tasks.TaskManager(include_path=out_dir, include_defaults=False)`` at the folder and
    load the returned ``name``.
    """
    prepared = data_dir if isinstance(data_dir, PreparedData) else read_prepared(data_dir)
    manifest = prepared.manifest
    name = task_name_for(manifest["dataset"])
    directory = Path(out_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    module_name = name  # one module per task, so several tasks can share a folder
    config = task_config(prepared, module_name)
    module_path = directory / f"{module_name}.py"
    order = shot_order_of(manifest)
    module_path.write_text(
        f'"""Generated by ctxscale.lm_eval_tasks for dataset {manifest["dataset"]!r}; do not edit."""\n\n'
        "from ctxscale.lm_eval_tasks import make_doc_to_text, make_metric, make_shot_pool, make_shot_target\n\n"
        f"doc_to_text = make_doc_to_text(prefix={manifest['prefix']!r}, suffix={manifest['suffix']!r})\n"
        f"shot_target = make_shot_target(prefix={manifest['prefix']!r}, suffix={manifest['suffix']!r}, "
        f"separator={manifest['separator']!r})\n"
        f"shot_pool = make_shot_pool({str(prepared.directory / 'shots.jsonl')!r})\n"
        f"{manifest['metric']} = make_metric({manifest['metric']!r})\n"
        + (
            "\nfrom ctxscale.lm_eval_tasks import make_instance_sampler, make_pool_docs\n\n"
            f"InstanceOrderSampler = make_instance_sampler({order['seed']!r})\n"
            "pool_docs = make_pool_docs(shot_pool)\n"
            if order["kind"] == "per-instance" else ""
        ),
        encoding="utf-8",
    )
    yaml_path = directory / f"{name}.yaml"
    header = f"# Generated by ctxscale.lm_eval_tasks from {prepared.directory}; do not edit.\n"
    yaml_path.write_text(
        header + yaml.dump(config, Dumper=_TaskDumper, sort_keys=False, allow_unicode=True, width=1000),
        encoding="utf-8",
    )
    return TaskFiles(
        name=name,
        directory=directory,
        yaml_path=yaml_path,
        module_path=module_path,
    )
