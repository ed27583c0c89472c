"""Checkpoint download: hub errors become one-line messages (exit 2); a finished download is atomic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import errors as hf_errors

from ctxscale import download as dl
from ctxscale.errors import UserError


def _http_error(cls, message="boom"):
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


@pytest.mark.parametrize(
    "error_class, expected",
    [
        (hf_errors.GatedRepoError, "is gated"),
        (hf_errors.RevisionNotFoundError, "has no revision 'abc123'"),
        (hf_errors.RepositoryNotFoundError, "was not found"),
    ],
)
def test_hub_errors_become_user_errors(monkeypatch, tmp_path, error_class, expected):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def fail(*args, **kwargs):
        raise _http_error(error_class)

    monkeypatch.setattr("huggingface_hub.list_repo_files", fail)
    with pytest.raises(UserError, match=expected):
        dl.download("org/model", "abc123", tmp_path / "model", attempts=1)
    assert not (tmp_path / "model").exists()


def test_transient_errors_are_retried_then_succeed(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = {"n": 0}

    def flaky_list(repo_id, revision=None, token=None, repo_type="model"):
        assert repo_type == "model"
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("connection reset")
        return ["config.json", "model.safetensors"]

    def fake_snapshot(repo_id, revision, local_dir, allow_patterns, token, repo_type="model"):
        assert "*.safetensors" in allow_patterns and "*.bin" not in allow_patterns
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (Path(local_dir) / ".cache").mkdir(exist_ok=True)

    monkeypatch.setattr("huggingface_hub.list_repo_files", flaky_list)
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    out = dl.download("org/model", "main", tmp_path / "model", attempts=3, backoff_s=0)
    assert calls["n"] == 2
    assert (out / "config.json").exists() and not (out / ".cache").exists()
    assert not (tmp_path / "model.partial").exists()


def test_offline_cli_gives_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ctxscale.download", "--repo-id", "meta-llama/Llama-2-7b-hf", "--out",
         str(tmp_path / "m")],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""}, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot download meta-llama/Llama-2-7b-hf")
    assert "Traceback" not in result.stderr


def test_pin_revisions_resolves_branches_to_commits_and_keeps_the_file(monkeypatch, tmp_path, capsys):
    """Every hub model's `revision: main` becomes the commit the (mocked) hub reports; nothing else changes."""
    import types

    import huggingface_hub

    repo_config = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
    config = tmp_path / "config.yaml"
    config.write_text(repo_config.read_text())
    asked = []

    def model_info(self, repo_id, revision=None, **kwargs):
        asked.append((repo_id, revision))
        return types.SimpleNamespace(sha=f"{abs(hash(repo_id)) % 16**40:040x}")

    def dataset_info(self, repo_id, revision=None, **kwargs):
        asked.append((repo_id, revision))
        return types.SimpleNamespace(sha="d" * 40)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    assert dl.pin_main([str(config)]) == 0  # without --write: print only
    assert config.read_text() == repo_config.read_text()
    assert dl.pin_main([str(config), "--write"]) == 0
    out = capsys.readouterr().out
    original, pinned = repo_config.read_text().splitlines(), config.read_text().splitlines()
    changed = [(a, b) for a, b in zip(original, pinned, strict=True) if a != b]
    # every model of the paper config (all groups, enabled or not) that comes from the hub
    models = yaml.safe_load(repo_config.read_text())["models"]
    hub = {name: spec for name, spec in models.items() if spec["source"] == "hf" and spec["revision"] == "main"}
    assert len(changed) == len(hub) + 1 > 1  # and the extension stage's corpus (a dataset repository)
    corpus = yaml.safe_load(config.read_text())["extension_data"]["pg_books"]
    assert corpus["revision"] == "d" * 40 and f"pg_books: main -> {'d' * 40}" in out
    assert all(a.split("#")[0].strip() == "revision: main" and b.strip().startswith("revision: ") for a, b in changed)
    for name, spec in yaml.safe_load(config.read_text())["models"].items():
        if name in hub:
            assert spec["revision"] == f"{abs(hash(spec['repo_id'])) % 16**40:040x}"
            assert f"{name}: main -> {spec['revision']}" in out
    assert {revision for _, revision in asked} == {"main"}
    asked.clear()
    assert dl.pin_main([str(config), "--write"]) == 0  # already pinned: no hub call
    assert asked == [] and "already pinned" in capsys.readouterr().out


def test_pin_revisions_hub_errors_are_one_line(monkeypatch, tmp_path):
    import huggingface_hub

    config = tmp_path / "config.yaml"
    config.write_text((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())

    def fail(self, repo_id, revision=None, **kwargs):
        raise _http_error(hf_errors.RepositoryNotFoundError)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", fail)
    with pytest.raises(UserError, match="WangResearchLab/Llama-2-7b-hf was not found"):
        dl.pin_revisions(config, write=True)
    assert "revision: main" in config.read_text()


def test_extension_corpus_fetches_only_the_split_parquet_files_atomically(monkeypatch, tmp_path):
    """ctxscale.extension_data: a dataset repository at its revision, only the files the glob names."""
    from ctxscale.extension_data import fetch_corpus

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    listed = ["README.md", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
              "data/validation-00000-of-00001.parquet"]
    fetched = {}

    def fake_list(repo_id, revision=None, token=None, repo_type="model"):
        fetched.update(repo_id=repo_id, revision=revision, repo_type=repo_type)
        return listed

    def fake_snapshot(repo_id, revision, local_dir, allow_patterns, token, repo_type="model"):
        fetched["files"] = list(allow_patterns)
        for name in allow_patterns:
            (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(local_dir) / name).write_bytes(b"PAR1")

    monkeypatch.setattr("huggingface_hub.list_repo_files", fake_list)
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    spec = {"repo_id": "org/corpus", "revision": "abc123", "files": "data/train-*.parquet"}
    out = fetch_corpus(spec, tmp_path / "corpus")
    assert fetched == {"repo_id": "org/corpus", "revision": "abc123", "repo_type": "dataset",
                       "files": listed[1:3]}  # fmt: skip
    assert sorted(p.name for p in out.rglob("*.parquet")) == ["train-00000-of-00002.parquet",
                                                               "train-00001-of-00002.parquet"]  # fmt: skip
    assert not (tmp_path / "corpus.partial").exists()
    with pytest.raises(UserError, match="has no file matching 'train/\\*.parquet'"):
        fetch_corpus({**spec, "files": "train/*.parquet"}, tmp_path / "other")
