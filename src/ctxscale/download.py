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
import re
import shutil
import sys
import time
from pathlib import Path

from ctxscale.errors import UserError

from ctxscale.steps import cli_main, setup_logging

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
    """Fetch the checkpoint ``repo_id@revision`` into ``out`` (atomically, resumable). Returns ``out``."""
    out = Path(out)
    if out.exists() and (out / "config.json").exists():
        log.info("%s already present at %s", repo_id, out)
        return out

    def patterns(files: list[str]) -> list[str]:
        return ALLOW_PATTERNS if any(f.endswith(".safetensors") for f in files) else BIN_PATTERNS

    fetch_snapshot(repo_id, revision, out, patterns, attempts=attempts, backoff_s=backoff_s)
    if not (out / "config.json").exists():
        shutil.rmtree(out)
        raise UserError(f"{repo_id}@{revision} has no config.json: is it a transformers checkpoint?")
    return out


def fetch_snapshot(repo_id: str, revision: str, out: Path, allow_patterns, *, repo_type: str = "model",
                   attempts: int = 4, backoff_s: float = 5.0) -> Path:
    """Fetch the files of ``repo_id@revision`` that ``allow_patterns(file list)`` selects into ``out``.

    The files land in ``out.partial`` and the folder is renamed when complete (a rerun resumes the partial
    folder); transient errors are retried with backoff, a user's (access, id, revision, offline) is one line.
    """
    from huggingface_hub import list_repo_files, snapshot_download

    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    token = os.environ.get("HF_TOKEN") or None
    for attempt in range(1, attempts + 1):
        try:
            files = list_repo_files(repo_id, revision=revision, token=token, repo_type=repo_type)
            log.info("downloading %s@%s (attempt %d/%d) into %s", repo_id, revision, attempt, attempts, partial)
            snapshot_download(repo_id, revision=revision, local_dir=partial, allow_patterns=allow_patterns(files),
                              token=token, repo_type=repo_type)
            break
        except UserError:  # the caller's own verdict on the file list (e.g. nothing matches): nothing to retry
            raise
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
    shutil.rmtree(partial / ".cache", ignore_errors=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    log.info("done: %s", out)
    return out


# ---------------------------------------------------------------------------------------------- pinning

COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_MODEL_LINE = re.compile(r"^  (?P<name>[A-Za-z0-9_.-]+):\s*(#.*)?$")
_REVISION_LINE = re.compile(r"^(?P<indent>    )revision:\s*(?P<value>[^\s#]+)(?P<rest>\s*(#.*)?)$")


def resolve_revision(repo_id: str, revision: str, repo_type: str = "model") -> str:
    """The commit sha that ``revision`` (a branch or tag) of ``repo_id`` points to now."""
    from huggingface_hub import HfApi

    api = HfApi(token=os.environ.get("HF_TOKEN") or None)
    info = api.dataset_info if repo_type == "dataset" else api.model_info
    try:
        sha = info(repo_id, revision=revision).sha
    except Exception as error:  # noqa: BLE001 - hub errors are explained, anything else re-raised
        message = _explain(error, repo_id, revision)
        if message is None:
            raise UserError(f"cannot resolve {repo_id}@{revision}: {str(error).splitlines()[0]}") from None
        raise UserError(message) from None
    if not sha or not COMMIT_SHA.match(sha):
        raise UserError(f"the hub returned no commit for {repo_id}@{revision}")
    return sha


def pin_revisions(config_path: Path, *, write: bool) -> list[tuple[str, str, str]]:
    """Resolve every hub model's and extension corpus's branch/tag revision to its commit; with ``write``, edit
    the file in place.

    Only the ``revision:`` lines change (comments and layout are kept). Returns (name, old, new) per change.
    """
    from ctxscale.config import load_config

    config = load_config(config_path)
    lines = config_path.read_text().splitlines(keepends=True)
    changes, model, section = [], None, None
    for i, line in enumerate(lines):
        if re.match(r"^\S", line):
            section, model = line.split(":", 1)[0], None
            continue
        match = _MODEL_LINE.match(line.rstrip("\n"))
        if section in ("models", "extension_data") and match:
            model = match.group("name")
            continue
        match = _REVISION_LINE.match(line.rstrip("\n"))
        if not (section in ("models", "extension_data") and model and match):
            continue
        spec = config[section].get(model, {})
        current = match.group("value")
        downloaded = section == "extension_data" and not spec.get("path") or spec.get("source") == "hf"
        if not downloaded or COMMIT_SHA.match(current):
            continue
        sha = resolve_revision(spec["repo_id"], current, "dataset" if section == "extension_data" else "model")
        lines[i] = f"{match.group('indent')}revision: {sha}{match.group('rest')}\n"
        changes.append((model, current, sha))
    if write and changes:
        tmp = config_path.with_name(f".{config_path.name}.tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, config_path)
    return changes


@cli_main
def pin_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ctxscale pin-revisions",
        description="Resolve every `revision: <branch or tag>` of the hub models in a workflow config to the "
        "commit it points to now, so a rerun months later loads the same weights. Prints the changes; "
        "--write edits the file in place (only the revision lines).",
    )
    parser.add_argument("config", type=Path, help="workflow config, e.g. config/config.yaml")
    parser.add_argument("--write", action="store_true", help="write the commits into the file")
    args = parser.parse_args(argv)
    changes = pin_revisions(args.config, write=args.write)
    for model, old, new in changes:
        print(f"{model}: {old} -> {new}")
    if not changes:
        print(f"{args.config}: every hub model is already pinned to a commit")
    elif not args.write:
        print(f"(not written; rerun with --write to pin {len(changes)} revision(s) in {args.config})")
    return 0


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
