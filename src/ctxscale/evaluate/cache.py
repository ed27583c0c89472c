"""The result files of a shot count and the cache of finished shot counts.

Outputs (docs/architecture.md): ``{out_dir}/shots_{k}.json`` (per-instance ``id, prompt_tokens, prediction,
score``; mean ``score``; mean ``n_pmt`` with BOS; ``n_instances``; ``n_refused`` and the refused ids with their
token counts; metadata) and ``shots_{k}.samples.jsonl.gz`` (lm-eval's per-sample records, gzip without
timestamp). Both are written atomically (temp file + ``os.replace``).

Snakemake deletes a job's outputs before rerunning it, so finished shot counts are also stored under
``--cache-dir``, content-addressed by a key (:func:`ctxscale.evaluate.fingerprint.cache_key`). Each shot count is
stored as soon as it finishes, so a job killed or out of memory at a high shot count keeps the lower ones.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterable

from ctxscale.files import atomic_write

# Bumped whenever the result files change in content or meaning; part of the cache key.
RESULT_FORMAT_VERSION = 1


def result_json_bytes(result: dict) -> bytes:
    return (json.dumps(result, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def samples_gzip_bytes(samples: Iterable[dict]) -> bytes:
    """JSON lines, gzip-compressed with no file name and mtime 0, so equal samples give equal bytes."""
    from lm_eval.utils import handle_non_serializable

    text = "".join(
        json.dumps(sample, ensure_ascii=False, default=handle_non_serializable) + "\n" for sample in samples
    )
    return gzip.compress(text.encode("utf-8"), mtime=0)


def result_paths(out_dir: Path, n_shots: int) -> tuple[Path, Path]:
    return out_dir / f"shots_{n_shots}.json", out_dir / f"shots_{n_shots}.samples.jsonl.gz"


class ResultCache:
    """Finished shot counts by cache key: ``{root}/{key[:2]}/{key}/{result.json, samples.jsonl.gz}``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lookup(self, key: str) -> tuple[Path, Path] | None:
        entry = self._entry(key)
        result, samples = entry / "result.json", entry / "samples.jsonl.gz"
        # result.json is written last, so its presence means the entry is complete.
        return (result, samples) if result.is_file() and samples.is_file() else None

    def store(self, key: str, result_bytes: bytes, samples_bytes: bytes) -> None:
        entry = self._entry(key)
        atomic_write(entry / "samples.jsonl.gz", samples_bytes)
        atomic_write(entry / "result.json", result_bytes)

    def copy_out(self, key: str, out_dir: Path, n_shots: int) -> None:
        """Write the stored shot count to its result files in ``out_dir`` (result file last)."""
        found = self.lookup(key)
        if found is None:  # pragma: no cover - store() ran just before
            raise RuntimeError(f"cache entry {key} vanished")
        result_source, samples_source = found
        result_path, samples_path = result_paths(out_dir, n_shots)
        atomic_write(samples_path, samples_source.read_bytes())
        atomic_write(result_path, result_source.read_bytes())
