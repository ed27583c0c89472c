"""The one atomic file writer every step uses.

A file is written to a temporary file in its own folder, flushed to disk, given the mode a plain
``open()`` would give it (``0666 & ~umask``: 0644 under the usual umask 022, so the rest of a group can
read the results on a shared cluster; ``mkstemp`` alone would leave 0600), then renamed over the target.
Readers (and Snakemake) never see a half-written file, and an interrupted write leaves the old file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 with the newlines as given) to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, _default_mode())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """A JSON file that must hold an object; ``what`` names it in errors (e.g. "fit file")."""
    import json

    from ctxscale.errors import UserError

    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"cannot read {what} {path}: it does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {what} {path}: not valid JSON ({error})") from None
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error}") from None
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} does not hold a JSON object")
    return value
