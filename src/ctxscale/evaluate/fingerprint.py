"""What a cached result depends on: fingerprints of the checkpoint, the prepared data and the code, and the
cache key over them.

The key covers: the model name; the model fingerprint (every file of the checkpoint folder: path, size and
SHA-256, where files over 16 MiB are hashed on 16 evenly spaced 64 KiB windows instead of in full, so a 13 GB
checkpoint costs about 1 MB of reading per file and copying a checkpoint does not invalidate it, while
retrained weights change every window); the model revision; the prepared data's SHA-256 (manifest, shot
pool, test set); the shot count; the settings that change results (each engine's
:meth:`~ctxscale.evaluate.engine.Engine.result_affecting`); the versions of lm-eval, transformers, torch (and
each engine's own, :attr:`~ctxscale.evaluate.engine.Engine.key_versions`); and the source of every file of
:data:`RESULT_AFFECTING_MODULES`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from ctxscale.errors import UserError
from ctxscale.evaluate.cache import RESULT_FORMAT_VERSION
from ctxscale.evaluate.engines import ENGINES
from ctxscale.evaluate.settings import Settings
from ctxscale.datasets.prepared import PreparedData
from ctxscale.lm_eval_tasks import TASK_FORMAT_VERSION

SMALL_FILE_BYTES = 16 * 2**20
HASH_WINDOWS, HASH_WINDOW_BYTES = 16, 64 * 2**10


def _file_digest(path: Path) -> str:
    """SHA-256 of a file, or of 16 evenly spaced 64 KiB windows (plus its size) for files over 16 MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= SMALL_FILE_BYTES:
            for chunk in iter(lambda: handle.read(2**20), b""):
                digest.update(chunk)
        else:
            digest.update(f"sampled:{size}".encode())
            last_start = size - HASH_WINDOW_BYTES
            for window in range(HASH_WINDOWS):
                handle.seek(last_start * window // (HASH_WINDOWS - 1))
                digest.update(handle.read(HASH_WINDOW_BYTES))
    return digest.hexdigest()


# Files in a checkpoint folder that describe how it was made rather than what it computes (training wall time
# changes from run to run): left out of the fingerprint so an identical retrain still hits the cache.
FINGERPRINT_IGNORED = {"ctxscale_training.json"}


def model_fingerprint(model_dir: str | Path) -> str:
    """Content fingerprint of a checkpoint folder (see module doc); hidden folders such as ``.cache`` and
    :data:`FINGERPRINT_IGNORED` metadata are skipped."""
    root = Path(model_dir)
    if not (root / "config.json").is_file():
        raise UserError(f"model directory {root} has no config.json (not a Hugging Face checkpoint)")
    entries = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if relative.as_posix() in FINGERPRINT_IGNORED:
            continue
        entries.append([relative.as_posix(), path.stat().st_size, _file_digest(path)])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def data_fingerprint(prepared: PreparedData) -> str:
    """SHA-256 over the prepared data's three files."""
    digest = hashlib.sha256()
    for name in ("manifest.json", "shots.jsonl", "test.jsonl"):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256((prepared.directory / name).read_bytes()).digest())
    return digest.hexdigest()


# What each evaluation record names of its environment.
RECORDED_VERSIONS = ("ctxscale", "lm_eval", "torch", "transformers", "vllm", "python")


# The code that decides prompts, generations and scores: this package (the engines, generation arguments,
# record building, vLLM's position table), the lm-eval tasks, the metrics and prompt building. A name that is
# a package stands for every .py file under it. Any edit to them is a new cache key: conservative (a comment
# edit re-evaluates), never stale.
# Of the datasets package only the prepared format and prompt building run at evaluation time (the data itself
# is fingerprinted by content).
RESULT_AFFECTING_MODULES = (
    "ctxscale.evaluate", "ctxscale.lm_eval_tasks", "ctxscale.metrics", "ctxscale.datasets.prepared",
)


def code_files(module: str) -> list[tuple[str, Path]]:
    """The source files of a module, located without importing it (importing costs seconds a job), as
    (relative name, path): a plain module's own file, or every .py file under a package, recursively, in
    sorted relative-path order."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"cannot locate the source of {module}")
    if spec.submodule_search_locations is None:
        return [(Path(spec.origin).name, Path(spec.origin))]
    root = Path(spec.origin).parent
    return sorted((path.relative_to(root).as_posix(), path) for path in root.rglob("*.py"))


def code_fingerprint() -> str:
    """Digest of every source file of :data:`RESULT_AFFECTING_MODULES`, with its module and relative name."""
    digest = hashlib.sha256()
    for module in RESULT_AFFECTING_MODULES:
        for name, path in code_files(module):
            digest.update(f"{module}/{name}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cache_key(
    *, model_name: str, model_fp: str, data_fp: str, n_shots: int, settings: Settings, versions: dict, code_fp: str
) -> str:
    engine = ENGINES[settings.backend]
    parts = {
        "result_format": RESULT_FORMAT_VERSION,
        "task_format": TASK_FORMAT_VERSION,
        "model_name": model_name,
        "model": model_fp,
        "data": data_fp,
        "n_shots": n_shots,
        "settings": engine.result_affecting(settings),
        "versions": {name: versions[name] for name in engine.key_versions},
        "code": code_fp,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
