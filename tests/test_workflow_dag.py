"""The workflow's DAG, checked by dry runs (no job executes): job counts per rule computed from the config,
the effect of enabling a model group, config errors at start, lint, and the SLURM profile parsing."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_util import job_counts

from ctxscale import config as ctxconfig

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def dry_run(tmp_path: Path, config: dict, *extra: str) -> tuple[int, str]:
    """Dry-run the workflow on ``config`` in an empty working directory; return (exit code, output)."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run(
        [*SNAKEMAKE, "-n", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(config_file), "--workflow-profile", "none", "--cores", "2", *extra],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    return result.returncode, result.stdout + result.stderr


def expected_counts(config: dict) -> dict[str, int]:
    """What the DAG must hold, derived from the config independently of the rules' helper code."""
    groups = config["model_groups"]
    models = [m for m, s in config["models"].items() if groups[s["group"]]["enabled"]]
    hf = [m for m in models if config["models"][m]["source"] == "hf"]
    families = {config["models"][m]["family"] for m in models}
    from ctxscale.datasets import DEEPMIND_MATH_CONFIGS

    datasets = 0
    for names in config["tasks"].values():
        for name in names:
            datasets += len(DEEPMIND_MATH_CONFIGS) if name == "deepmind-math" else 1
    experiments = [e for e, s in config["experiments"].items() if s.get("enabled", True)]
    heldout_groups = config["experiments"]["held-out-compute"].get("holdout_groups", [])
    if not any(config["models"][m]["group"] in heldout_groups for m in models):
        experiments.remove("held-out-compute")
    tasks = len(config["tasks"])
    return {
        "download_model": len(hf),
        "prepare_dataset": len(families) * datasets,
        "evaluate": len(models) * datasets,
        "model_info": len(models),
        "aggregate": 1,
        "fit": len(experiments) * tasks,
        "figures": 1,
        "tables": 1,
        "all": 1,
    }


@pytest.fixture(scope="module")
def paper_config() -> dict:
    with open(REPO / "config" / "config.yaml") as handle:
        return yaml.safe_load(handle)


def test_paper_dag_job_counts(tmp_path, paper_config):
    code, output = dry_run(tmp_path, paper_config)
    assert code == 0, output[-3000:]
    counts = job_counts(output)
    expected = expected_counts(paper_config)
    assert counts == expected
    # 12 Llama-2 checkpoints x (3 + 56 + 8 + 5) datasets, as the paper's configs give
    assert counts["evaluate"] == 12 * 72


def test_enabling_ood_adds_only_its_jobs(tmp_path, paper_config):
    (tmp_path / "a").mkdir()
    base = job_counts(dry_run(tmp_path / "a", paper_config)[1])
    config = copy.deepcopy(paper_config)
    config["model_groups"]["ood"]["enabled"] = True
    (tmp_path / "b").mkdir()
    code, output = dry_run(tmp_path / "b", config)
    assert code == 0, output[-3000:]
    counts = job_counts(output)
    assert counts == expected_counts(config)
    ood = [m for m, s in config["models"].items() if s["group"] == "ood"]
    new_families = {config["models"][m]["family"] for m in ood} - {"llama2"}
    datasets = counts["evaluate"] // (12 + len(ood))
    assert counts["download_model"] - base["download_model"] == len(ood)
    assert counts["evaluate"] - base["evaluate"] == len(ood) * datasets
    # the new tokenizer families (Qwen2.5, Gemma-2) need their own prepared data; Llama-2-70B reuses llama2's
    assert counts["prepare_dataset"] - base["prepare_dataset"] == len(new_families) * datasets
    assert counts["fit"] - base["fit"] == len(config["tasks"])  # the held-out-compute fit of each task
    assert counts["model_info"] - base["model_info"] == len(ood)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["evaluation"].__setitem__("batch_size", "eight"), "evaluation.batch_size"),
        (lambda c: c["evaluation"].__setitem__("batchsize", 8), "evaluation.batchsize"),
        (lambda c: c["models"]["llama2-7b-8k"].__setitem__("n_ctx", -1), "models.llama2-7b-8k.n_ctx"),
        (lambda c: c["tasks"]["arithmetic"].append("gsm9k"), "gsm9k"),
        (lambda c: c["fit"].__setitem__("objective", "huber"), "fit.objective"),
    ],
)
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path, paper_config, edit, message):
    config = copy.deepcopy(paper_config)
    edit(config)
    code, output = dry_run(tmp_path, config)
    assert code != 0
    assert message in output
    assert "Traceback" not in output
    assert "Job stats" not in output


def test_validate_config_fills_defaults(paper_config):
    config = copy.deepcopy(paper_config)
    del config["fit"]
    ctxconfig.validate_config(config)
    assert config["fit"] == {
        "objective": "mse", "penalty": "paper", "seeds": 5, "bootstrap": 1000, "per_dataset": False,
        "groups": ["yarn"],
    }


def test_lint_reports_no_errors():
    result = subprocess.run(
        [*SNAKEMAKE, "--lint", "--workflow-profile", "none"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
