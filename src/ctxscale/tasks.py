"""lm-eval task configs generated from prepared data, rendering the official prompts byte for byte.

A prepared data directory (``shots.jsonl``, ``test.jsonl``, ``manifest.json``; see docs/architecture.md)
becomes one lm-eval ``generate_until`` task: a YAML file plus a small generated Python module beside it
(``ctxscale_task_<name>.py``) holding the prompt function and the metric, because lm-eval resolves
``!function module.fn`` relative to the YAML's folder.

How the official construction (paper-spec §4.4, ``utils.py`` of the official repository)::

    "".join(prefix + s.input + suffix + s.reference + separator for s in shots[:n])
        + (prefix + x.input + suffix).rstrip()

maps onto lm-eval's ``doc_to_text + target_delimiter + doc_to_target + fewshot_delimiter`` per shot and
``doc_to_text`` for the query (lm-eval 0.4.13, ``ConfigurableTask.fewshot_context``):

- ``doc_to_text(doc) = (prefix + doc.input + suffix).rstrip()`` for shots and query alike;
- ``target_delimiter`` = the whitespace that ``rstrip`` removed, which is the trailing whitespace of the
  suffix (``" "`` for ``"\\nAnswer: "``, ``""`` for aqua-rat's ``"...\\nAnswer:"`` and for WMT's empty
  suffix). It is derived from the manifest and checked against every shot row, since an empty or
  whitespace-only suffix leaves the removed tail to the input text;
- ``fewshot_delimiter`` = the manifest's separator; ``fewshot_config: {sampler: first_n}`` over the
  pre-shuffled pool, so the n-shot prompt uses the pool's first n rows and shots nest across n;
- ``num_fewshot`` is never written into the YAML (a YAML ``num_fewshot: 0`` silently blocks the
  ``simple_evaluate(num_fewshot=k)`` override, ecosystem-notes §0.2).

Two lm-eval behaviours would break byte equality and are refused with a :class:`UserError` when the
task is written: a shot whose reference is empty (lm-eval then drops both delimiters of that shot), and a
shot pool whose ``rstrip`` tails differ from row to row (possible only with an empty suffix).

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

from ctxscale.errors import UserError

MANIFEST_FIELDS = ("dataset", "task", "prefix", "suffix", "separator", "stop", "metric", "max_new_tokens")
KNOWN_METRICS = ("mc_match", "math_equiv", "bleu_4")
TASK_NAME_PREFIX = "ctxscale_"
# Bumped whenever the generated YAML or module changes in a way that can change prompts or scores;
# part of the evaluation cache key.
TASK_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PreparedData:
    """A prepared data directory, read and checked."""

    directory: Path
    manifest: dict
    shots: list[dict]
    test: list[dict]


@dataclass(frozen=True)
class TaskFiles:
    """What :func:`write_task` wrote: the lm-eval task name and its files."""

    name: str
    directory: Path
    yaml_path: Path
    module_path: Path
    target_delimiter: str


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{line_number} is not valid JSON ({error.msg})") from None
    return rows


def read_prepared(data_dir: str | Path) -> PreparedData:
    """Read and check a prepared data directory (the contract of docs/architecture.md)."""
    directory = Path(data_dir).resolve()
    paths = {name: directory / name for name in ("manifest.json", "shots.jsonl", "test.jsonl")}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise UserError(f"prepared data directory {directory} lacks {', '.join(missing)}")
    try:
        manifest = json.loads(paths["manifest.json"].read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{paths['manifest.json']} is not valid JSON ({error.msg})") from None
    absent = [field for field in MANIFEST_FIELDS if field not in manifest]
    if absent:
        raise UserError(f"{paths['manifest.json']} lacks the field(s) {', '.join(absent)}")
    for field in ("prefix", "suffix", "separator"):
        if not isinstance(manifest[field], str):
            raise UserError(f"{paths['manifest.json']}: {field} must be a string")
    if not isinstance(manifest["stop"], list) or not all(isinstance(s, str) and s for s in manifest["stop"]):
        raise UserError(f"{paths['manifest.json']}: stop must be a list of non-empty strings")
    if not isinstance(manifest["max_new_tokens"], int) or manifest["max_new_tokens"] < 1:
        raise UserError(f"{paths['manifest.json']}: max_new_tokens must be a positive integer")
    if manifest["metric"] not in KNOWN_METRICS:
        raise UserError(
            f"{paths['manifest.json']}: unknown metric {manifest['metric']!r} (known: {', '.join(KNOWN_METRICS)})"
        )
    shots = _read_jsonl(paths["shots.jsonl"])
    test = _read_jsonl(paths["test.jsonl"])
    for name, rows, fields in (("shots.jsonl", shots, ("input", "reference")), ("test.jsonl", test, ("id", "input", "reference"))):
        for index, row in enumerate(rows):
            for field in fields:
                if not isinstance(row.get(field), str):
                    raise UserError(f"{directory / name} row {index}: {field} must be a string")
    if not test:
        raise UserError(f"{paths['test.jsonl']} has no test instances")
    ids = [row["id"] for row in test]
    if len(set(ids)) != len(ids):
        raise UserError(f"{paths['test.jsonl']} has duplicate ids")
    return PreparedData(directory=directory, manifest=manifest, shots=shots, test=test)


def task_name_for(dataset: str) -> str:
    """The lm-eval task name of a dataset (``deepmind-math.algebra__linear_1d`` → ``ctxscale_deepmind_math_algebra__linear_1d``)."""
    return TASK_NAME_PREFIX + re.sub(r"[^A-Za-z0-9_]+", "_", dataset)


def query_text(prefix: str, suffix: str, input_text: str) -> str:
    """lm-eval's ``doc_to_text``: the official query, ``(prefix + input + suffix).rstrip()``."""
    return (prefix + input_text + suffix).rstrip()


def official_prompt(manifest: dict, shots: list[dict], input_text: str, n_shots: int) -> str:
    """The official n-shot prompt (paper-spec §4.4), used to check what lm-eval renders."""
    prefix, suffix, separator = manifest["prefix"], manifest["suffix"], manifest["separator"]
    block = "".join(prefix + s["input"] + suffix + s["reference"] + separator for s in shots[:n_shots])
    return block + query_text(prefix, suffix, input_text)


def _removed_tail(text: str) -> str:
    return text[len(text.rstrip()):]


def target_delimiter_for(manifest: dict, shots: list[dict]) -> str:
    """The whitespace ``rstrip`` removes from ``prefix + input + suffix``, checked on every shot row.

    Raises UserError when lm-eval could not render the official shots byte for byte (see module doc).
    """
    prefix, suffix = manifest["prefix"], manifest["suffix"]
    delimiter = _removed_tail(suffix)
    for index, shot in enumerate(shots):
        if shot["reference"] == "":
            raise UserError(
                f"shot row {index} of dataset {manifest['dataset']} has an empty reference; lm-eval would drop "
                "its delimiters, so the prompt could not equal the official one (filter it out when preparing)"
            )
        tail = _removed_tail(prefix + shot["input"] + suffix)
        if tail != delimiter:
            if suffix.strip():
                raise AssertionError("a suffix with visible text fixes the tail")  # pragma: no cover
            raise UserError(
                f"shot row {index} of dataset {manifest['dataset']} ends in whitespace {tail!r} where the other "
                f"rows end in {delimiter!r}; with an empty suffix the prompt could not equal the official one"
            )
    return delimiter


def make_doc_to_text(prefix: str, suffix: str) -> Callable[[dict], str]:
    """The ``doc_to_text`` function of a task with this prefix and suffix."""

    def doc_to_text(doc: dict) -> str:
        return query_text(prefix, suffix, doc["input"])

    return doc_to_text


def make_metric(name: str) -> Callable[..., float]:
    """lm-eval metric function ``fn(references=[gold], predictions=[pred])`` named ``name``.

    The result key in lm-eval's output is the function's ``__name__``, so the wrapper carries the metric's
    name. A TypeError inside a metric would make lm-eval silently retry with another call signature
    (``api/task.py``), hiding the bug, so it is re-raised as a RuntimeError.
    """
    from ctxscale import metrics

    if name not in KNOWN_METRICS:
        raise UserError(f"unknown metric {name!r} (known: {', '.join(KNOWN_METRICS)})")
    implementation = getattr(metrics, f"{name}_metric")

    def metric(references: list, predictions: list) -> float:
        try:
            value = implementation(references=references, predictions=predictions)
        except TypeError as error:
            raise RuntimeError(f"metric {name} failed: {error}") from error
        return float(value)

    metric.__name__ = metric.__qualname__ = name
    return metric


class _FunctionRef(str):
    """A ``!function module.name`` YAML scalar."""


class _TaskDumper(yaml.SafeDumper):
    pass


_TaskDumper.add_representer(_FunctionRef, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def task_config(prepared: PreparedData, module_name: str) -> dict[str, Any]:
    """The lm-eval task config (as a dict; ``!function`` values are :class:`_FunctionRef`)."""
    manifest = prepared.manifest
    return {
        "task": task_name_for(manifest["dataset"]),
        "dataset_path": "json",
        "dataset_name": None,
        # Absolute paths: lm-eval hands data_files to datasets.load_dataset, which resolves against the CWD.
        "dataset_kwargs": {
            "data_files": {
                "train": str(prepared.directory / "shots.jsonl"),
                "test": str(prepared.directory / "test.jsonl"),
            }
        },
        "fewshot_split": "train",
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": _FunctionRef(f"{module_name}.doc_to_text"),
        "doc_to_target": "reference",
        "target_delimiter": target_delimiter_for(manifest, prepared.shots),
        "fewshot_delimiter": manifest["separator"],
        "fewshot_config": {"sampler": "first_n"},
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
    module_path.write_text(
        f'"""Generated by ctxscale.tasks for dataset {manifest["dataset"]!r}; do not edit."""\n\n'
        "from ctxscale.tasks import make_doc_to_text, make_metric\n\n"
        f"doc_to_text = make_doc_to_text(prefix={manifest['prefix']!r}, suffix={manifest['suffix']!r})\n"
        f"{manifest['metric']} = make_metric({manifest['metric']!r})\n",
        encoding="utf-8",
    )
    yaml_path = directory / f"{name}.yaml"
    header = f"# Generated by ctxscale.tasks from {prepared.directory}; do not edit.\n"
    yaml_path.write_text(
        header + yaml.dump(config, Dumper=_TaskDumper, sort_keys=False, allow_unicode=True, width=1000),
        encoding="utf-8",
    )
    return TaskFiles(
        name=name,
        directory=directory,
        yaml_path=yaml_path,
        module_path=module_path,
        target_delimiter=config["target_delimiter"],
    )
