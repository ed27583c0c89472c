"""Download a Hugging Face checkpoint at a pinned revision into ``resources/models/{model}``.

``python -m ctxscale.download --repo-id ORG/NAME --revision SHA --out DIR``

- The token comes from ``HF_TOKEN`` (or the cached ``hf auth login``), never from the config.
- Only what loading needs is fetched (config, tokenizer, safetensors weights); ``*.bin`` weights are taken
  only when a repository has no safetensors.
- The files land in ``DIR.partial`` first and the folder is renamed when complete, so an interrupted
  download never looks finished; a rerun resumes from the partial folder.
- Transient network errors are retried with backoff; a gated model without access, a missing repository or
  revision, or no network ends with a one-line error (exit 2).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from ctxscale.errors import UserError, cli_main, setup_logging

log = logging.getLogger("ctxscale.download")

ALLOW_PATTERNS = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.safetensors", "*.py"]
BIN_PATTERNS = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.bin", "*.py"]


def _explain(error: Exception, repo_id: str, revision: str) -> str | None:
    """A one-line explanation for errors a user can act on; None for transient ones worth retrying."""
    from huggingface_hub import errors as hf_errors

    if isinstance(error, hf_errors.GatedRepoError):
        return (
            f"{repo_id} is gated and this token has no access: accept the licence on its Hugging Face page, "
            "then set HF_TOKEN to a token of that account"
        )
    if isinstance(error, hf_errors.RevisionNotFoundError):
        return f"{repo_id} has no revision '{revision}': check models.<name>.revision in the config"
    if isinstance(error, hf_errors.RepositoryNotFoundError):
        return (
            f"{repo_id} was not found (or is private and HF_TOKEN is missing): check models.<name>.repo_id "
            "in the config, or set HF_TOKEN"
        )
    if isinstance(error, hf_errors.OfflineModeIsEnabled) or os.environ.get("HF_HUB_OFFLINE") in {"1", "true"}:
        return f"cannot download {repo_id}: HF_HUB_OFFLINE is set; unset it or put the checkpoint in place yourself"
    if isinstance(error, hf_errors.LocalEntryNotFoundError):
        return f"cannot download {repo_id}: the Hugging Face hub is unreachable from this machine (no network?)"
    return None


def download(repo_id: str, revision: str, out: Path, *, attempts: int = 4, backoff_s: float = 5.0) -> Path:
    """Fetch ``repo_id@revision`` into ``out`` (atomically, resumable). Returns ``out``."""
    from huggingface_hub import list_repo_files, snapshot_download

    out = Path(out)
    if out.exists() and (out / "config.json").exists():
        log.info("%s already present at %s", repo_id, out)
        return out
    partial = out.with_name(out.name + ".partial")
    token = os.environ.get("HF_TOKEN") or None
    for attempt in range(1, attempts + 1):
        try:
            files = list_repo_files(repo_id, revision=revision, token=token)
            patterns = ALLOW_PATTERNS if any(f.endswith(".safetensors") for f in files) else BIN_PATTERNS
            log.info("downloading %s@%s (attempt %d/%d) into %s", repo_id, revision, attempt, attempts, partial)
            snapshot_download(
                repo_id, revision=revision, local_dir=partial, allow_patterns=patterns, token=token
            )
            break
        except Exception as error:  # noqa: BLE001 - classified below; unknown errors are retried then re-raised
            message = _explain(error, repo_id, revision)
            if message is not None:
                raise UserError(message) from None
            if attempt == attempts:
                raise UserError(
                    f"download of {repo_id} failed after {attempts} attempts (is the hub reachable?): {error}"
                ) from None
            wait = backoff_s * 2 ** (attempt - 1)
            log.warning("download of %s failed (%s); retrying in %.0f s", repo_id, error, wait)
            time.sleep(wait)
    if not (partial / "config.json").exists():
        raise UserError(f"{repo_id}@{revision} has no config.json: is it a transformers checkpoint?")
    shutil.rmtree(partial / ".cache", ignore_errors=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    log.info("done: %s", out)
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxscale.download", description=__doc__.splitlines()[0])
    parser.add_argument("--repo-id", required=True, help="Hugging Face repository, ORG/NAME")
    parser.add_argument("--revision", default="main", help="branch, tag or commit sha (pin a sha)")
    parser.add_argument("--out", required=True, type=Path, help="destination folder")
    parser.add_argument("--attempts", type=int, default=4, help="tries for transient network errors")
    args = parser.parse_args(argv)
    setup_logging()
    download(args.repo_id, args.revision, args.out, attempts=args.attempts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
