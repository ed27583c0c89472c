"""The prepared-data format: one dataset for one tokenizer family, as ``shots.jsonl``, ``test.jsonl`` and
``manifest.json`` (docs/architecture.md, "Prepared data"), its one type :class:`PreparedData`, its writer
:func:`write_prepared` and its reader :func:`read_prepared`, and the n-shot prompt it defines.

Both kinds of dataset are written here: the paper's (:mod:`ctxscale.datasets.prepare`) and the miniature's
generated ones (:mod:`ctxscale.datasets.synthetic`); the evaluation and the lm-eval task files
(:mod:`ctxscale.lm_eval_tasks`) read them back through :func:`read_prepared`, which checks what they rely on.

The n-shot prompt of :meth:`PreparedData.prompt` is the official ``utils.py`` construction:
``"".join(prefix + s.input + suffix + s.reference + separator for s in shots[:n])
+ (prefix + x.input + suffix).rstrip()``, where ``shots[:n]`` are the pool's first n (``shot_order`` nested, the
paper's) or the first n of the instance's own order of the pool (``per-instance``, :func:`instance_shot_order`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ctxscale.errors import UserError
from ctxscale.files import atomic_write

SHOTS_FILE = "shots.jsonl"
TEST_FILE = "test.jsonl"
MANIFEST_FILE = "manifest.json"
MANIFEST_KEYS = (
    "dataset", "task", "prefix", "suffix", "separator", "stop", "metric", "max_new_tokens",
    "counts", "seeds", "source", "tokenizer",
)  # fmt: skip
# The metrics a manifest may name (:mod:`ctxscale.metrics`; the lm-eval result key is the same name).
KNOWN_METRICS = ("mc_match", "math_equiv", "bleu_4")
SHOT_ORDERS = ("nested", "per-instance")


@dataclass(frozen=True)
class PreparedData:
    """The three files of one prepared dataset; ``directory`` is where they were read from or written to
    (absolute), ``None`` for data held only in memory."""

    shots: list[dict[str, str]]
    test: list[dict[str, str]]
    manifest: dict[str, Any]
    # keyword-only, so that subclasses (the synthetic datasets) may add fields without defaults
    directory: Path | None = dataclasses.field(default=None, kw_only=True)

    def shots_for(self, row_id: str | None, n_shots: int) -> list[dict[str, str]]:
        """The ``n_shots`` shots of one test instance (:func:`shots_for`)."""
        return shots_for(self.manifest, self.shots, row_id, n_shots)

    def prompt(self, query_input: str, n_shots: int, row_id: str | None = None) -> str:
        """The official n-shot prompt for one query (its shots: :meth:`shots_for`)."""
        m = self.manifest
        return build_prompt(m["prefix"], m["suffix"], m["separator"], self.shots_for(row_id, n_shots), query_input)


def build_prompt(
    prefix: str, suffix: str, separator: str, shots: Iterable[Mapping[str, str]], query_input: str
) -> str:
    """``"".join(prefix+input+suffix+reference+separator for shots) + (prefix+query+suffix).rstrip()``."""
    block = "".join(prefix + s["input"] + suffix + s["reference"] + separator for s in shots)
    return block + (prefix + query_input + suffix).rstrip()


def shots_for(manifest: Mapping[str, Any], shots: Sequence[dict[str, str]], row_id: str | None,
              n_shots: int) -> list[dict[str, str]]:
    """The ``n_shots`` shots of one test instance: the pool's first n (``shot_order`` nested, the paper's),
    or the first n of the instance's own order (``per-instance``, :func:`instance_shot_order`)."""
    if not 0 <= n_shots <= len(shots):
        raise UserError(f"{manifest['dataset']}: {n_shots} shots requested, the pool has {len(shots)}")
    order = shot_order_of(manifest)
    if order["kind"] == "nested":
        return list(shots[:n_shots])
    if row_id is None:
        raise UserError(f"{manifest['dataset']}: per-instance shots need the test instance's id")
    return [shots[i] for i in instance_shot_order(order["seed"], row_id, len(shots))[:n_shots]]


def shot_order_of(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest's shot order: ``{"kind": "nested"}`` (no ``shot_order`` field: every prepared dataset of
    the paper) or ``{"kind": "per-instance", "seed": S}`` (the miniature's generated datasets)."""
    order = manifest.get("shot_order") or {"kind": "nested"}
    if order.get("kind") not in SHOT_ORDERS:
        raise UserError(f"{manifest.get('dataset')}: shot_order kind must be one of {', '.join(SHOT_ORDERS)}")
    if order["kind"] == "per-instance" and not isinstance(order.get("seed"), int):
        raise UserError(f"{manifest.get('dataset')}: a per-instance shot_order needs an integer seed")
    return dict(order)


def instance_shot_order(seed: int, row_id: str, pool_size: int) -> list[int]:
    """A test instance's own order of the shot pool: a permutation drawn from ``(seed, crc32(id))``.

    Its first n rows are the instance's n shots, so shots still nest across shot counts for each instance,
    and the draw depends on nothing but the seed and the id (not on which instances run, or in what order).
    """
    stream = np.random.default_rng([int(seed), zlib.crc32(row_id.encode("utf-8"))])
    return stream.permutation(pool_size).tolist()


def _jsonl(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _check_rows(rows: Sequence[Mapping[str, Any]], keys: tuple[str, ...], what: str) -> list[dict[str, str]]:
    checked = []
    for i, row in enumerate(rows):
        if set(row) != set(keys) or not all(isinstance(row[k], str) for k in keys):
            raise ValueError(f"{what} row {i} must have exactly the string fields {keys}, got {dict(row)!r}")
        checked.append({k: row[k] for k in keys})
    return checked


_UNSET = object()


def write_prepared(
    out_dir: str | os.PathLike,
    shots: Sequence[Mapping[str, str]],
    test: Sequence[Mapping[str, str]],
    manifest: Mapping[str, Any],
    *,
    tokenizer: Any = _UNSET,
) -> Path:
    """Write ``shots.jsonl``, ``test.jsonl`` and ``manifest.json`` atomically; return the directory.

    Shot rows are ``{"input", "reference"}``, test rows ``{"id", "input", "reference"}``, all strings;
    the manifest must have every key of :data:`MANIFEST_KEYS` (``tokenizer=...`` sets or replaces its
    ``"tokenizer"`` entry). Test ids must be unique. The manifest is written last, so its presence
    marks a complete directory.
    """
    if tokenizer is not _UNSET:
        manifest = {**manifest, "tokenizer": tokenizer}
    shots = _check_rows(shots, ("input", "reference"), "shot")
    test = _check_rows(test, ("id", "input", "reference"), "test")
    ids = [row["id"] for row in test]
    if len(set(ids)) != len(ids):
        raise ValueError("test row ids must be unique")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"manifest is missing {', '.join(missing)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # an old manifest must not vouch for new data
    atomic_write(out / SHOTS_FILE, _jsonl(shots))
    atomic_write(out / TEST_FILE, _jsonl(test))
    atomic_write(out / MANIFEST_FILE, json.dumps(dict(manifest), indent=2, ensure_ascii=False) + "\n")
    return out


def read_prepared(data_dir: str | os.PathLike) -> PreparedData:
    """Read a directory written by :func:`write_prepared` and check what the prompts, the lm-eval task and the
    evaluation rely on: the manifest's keys and types, string fields in every row, at least one test instance,
    unique test ids. A failed check is a :class:`UserError` naming the file."""
    directory = Path(data_dir).resolve()
    paths = {name: directory / name for name in (SHOTS_FILE, TEST_FILE, MANIFEST_FILE)}
    absent = [name for name, path in paths.items() if not path.is_file()]
    if absent:
        raise UserError(f"{directory} is not a prepared dataset: missing {', '.join(absent)}")
    try:
        manifest = json.loads(paths[MANIFEST_FILE].read_text(encoding="utf-8"))
        shots = [json.loads(line) for line in paths[SHOTS_FILE].read_text(encoding="utf-8").splitlines() if line]
        test = [json.loads(line) for line in paths[TEST_FILE].read_text(encoding="utf-8").splitlines() if line]
    except json.JSONDecodeError as exc:
        raise UserError(f"{directory}: corrupt prepared-data file ({exc})") from None
    _check_manifest(manifest, paths[MANIFEST_FILE])
    for path, rows, fields in ((paths[SHOTS_FILE], shots, ("input", "reference")),
                               (paths[TEST_FILE], test, ("id", "input", "reference"))):  # fmt: skip
        for index, row in enumerate(rows):
            for field in fields:
                if not isinstance(row.get(field), str):
                    raise UserError(f"{path} row {index}: {field} must be a string")
    if not test:
        raise UserError(f"{paths[TEST_FILE]} has no test instances")
    ids = [row["id"] for row in test]
    if len(set(ids)) != len(ids):
        raise UserError(f"{paths[TEST_FILE]} has duplicate ids")
    return PreparedData(shots=shots, test=test, manifest=manifest, directory=directory)


def _check_manifest(manifest: Mapping[str, Any], where: Path) -> None:
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise UserError(f"{where} is missing {', '.join(missing)}")
    for field in ("prefix", "suffix", "separator"):
        if not isinstance(manifest[field], str):
            raise UserError(f"{where}: {field} must be a string")
    if not isinstance(manifest["stop"], list) or not all(isinstance(s, str) and s for s in manifest["stop"]):
        raise UserError(f"{where}: stop must be a list of non-empty strings")
    max_new_tokens = manifest["max_new_tokens"]
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UserError(f"{where}: max_new_tokens must be a positive integer")
    if manifest["metric"] not in KNOWN_METRICS:
        raise UserError(f"{where}: unknown metric {manifest['metric']!r} (known: {', '.join(KNOWN_METRICS)})")
