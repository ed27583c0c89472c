"""The workflow's DAG, checked by dry runs (no job executes): job counts per rule computed from the config,
the effect of enabling a model group, config errors at start, lint, and the SLURM profile parsing."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from workflow_util import clone, job_counts, snakemake_in, user_environment

from ctxscale import config as ctxconfig

REPO = Path(__file__).resolve().parents[1]
# An empty SLURM config: every SLURM command fails at once, so the dry runs below prove they need no cluster.
NO_CLUSTER = {"SLURM_CONF": "/dev/null"}


@pytest.fixture(scope="module")
def clone_dir(tmp_path_factory) -> Path:
    """A fresh clone's root, where the README's commands are typed."""
    return clone(tmp_path_factory.mktemp("clone"))


def dry_run(clone_dir: Path, config: dict | None, *args: str) -> tuple[int, str]:
    """``snakemake -n ARGS`` in the clone's root; with ``config``, it is written to config/test.yaml and given
    as ``--configfile config/test.yaml`` (as a user passes their own)."""
    if config is not None:
        (clone_dir / "config" / "test.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        args = ("--configfile", "config/test.yaml", *args)
    result = snakemake_in(clone_dir, "-n", *args, env=user_environment(**NO_CLUSTER))
    return result.returncode, result.stdout + result.stderr


def expected_counts(config: dict) -> dict[str, int]:
    """What the DAG must hold, derived from the config independently of the rules' helper code."""
    groups = config["model_groups"]
    models = [m for m, s in config["models"].items() if groups[s["group"]]["enabled"]]
    rebuild = config.get("extension", {}).get("rebuild_from_base", False)
    source = {}
    for m in models:
        spec = config["models"][m]
        built = spec["source"] == "extend" or rebuild and spec["source"] == "hf" and {"extends", "extend"} <= set(spec)
        source[m] = "extend" if built else spec["source"]
    corpora = {(config["models"][m]["extend"].get("data") or {"source": "pg_books"})["source"]
               for m in models if source[m] == "extend"} - {"synthetic"}  # fmt: skip
    families = {config["models"][m]["family"] for m in models}
    from ctxscale.datasets.registry import DEEPMIND_MATH_CONFIGS

    datasets = 0
    for names in config["tasks"].values():
        for name in names:
            datasets += len(DEEPMIND_MATH_CONFIGS) if name == "deepmind-math" else 1
    experiments = [e for e, s in config["experiments"].items() if s.get("enabled", True) and e != "compare"]
    compare = config["experiments"].get("compare", {}).get("enabled", False)  # one job: every law, every task
    heldout = config["experiments"]["held-out-compute"]
    if not any(config["models"][m]["group"] in heldout.get("holdout_groups", []) or m in heldout.get(
            "holdout_models", []) for m in models):  # fmt: skip
        experiments.remove("held-out-compute")
    tiny = [m for m in models if source[m] == "tiny"]
    counts = {
        "download_model": sum(source[m] == "hf" for m in models),
        "tiny_tokenizer": len({config["models"][m]["family"] for m in tiny}),
        "train_tiny_model": len(tiny),
        "fetch_extension_data": len(corpora),
        "extend_model": sum(source[m] == "extend" for m in models),
        "prepare_dataset" if config["data"]["source"] == "hf" else "synthesize_dataset": len(families) * datasets,
        # evaluation.job_per: one job per (model, dataset), or per model over all its datasets
        "evaluate": len(models) * (datasets if config["evaluation"].get("job_per", "dataset") == "dataset" else 1),
        "model_info": len(models),
        "aggregate": 1,
        "fit": len(experiments) * len(config["tasks"]),
        "compare": int(compare),
        "figures": 1,
        "tables": 1,
        "all": 1,
    }
    return {rule: n for rule, n in counts.items() if n}


@pytest.fixture(scope="module")
def paper_config() -> dict:
    with open(REPO / "config" / "config.yaml") as handle:
        return yaml.safe_load(handle)


def _paper_checks(code: int, output: str, paper_config: dict) -> None:
    assert code == 0, output[-3000:]
    counts = job_counts(output)
    assert counts == expected_counts(paper_config)
    # 12 Llama-2 checkpoints x (3 + 56 + 8 + 5) datasets, as the paper's configs give; no miniature job
    assert counts["evaluate"] == 12 * 72 and sum(counts.values()) == 980
    assert not {"tiny_tokenizer", "train_tiny_model", "extend_model", "synthesize_dataset"} & set(counts)
    assert "tiny-" not in output


def test_readme_paper_command_dry_runs_exactly_the_paper(clone_dir, paper_config):
    """The README's workstation command, typed in a clone's root, with -n."""
    _paper_checks(*dry_run(clone_dir, None, "--configfile", "config/config.yaml", "--workflow-profile",
                           "workflow/profiles/default", "--cores", "16", "--resources", "gpu=4"), paper_config)  # fmt: skip


def test_readme_slurm_command_dry_runs_exactly_the_paper(clone_dir, paper_config):
    code, output = dry_run(clone_dir, None, "--configfile", "config/config.yaml", "--profile", "workflow/profiles/slurm")
    assert "Using profile workflow/profiles/slurm" in output
    _paper_checks(code, output, paper_config)


def test_miniature_is_the_default_with_no_flags(clone_dir):
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    ctxconfig.validate_config(demo)
    code, output = dry_run(clone_dir, None, "--workflow-profile", "workflow/profiles/default")
    assert code == 0, output[-3000:]
    counts = job_counts(output)
    assert counts == expected_counts(demo) and sum(counts.values()) == 54
    assert counts["evaluate"] == len(demo["models"])  # the miniature evaluates per model (evaluation.job_per)
    assert "llama2" not in output


def test_several_configfiles_merge_in_order(clone_dir, paper_config):
    """Combining on purpose: later --configfile files override earlier ones (README)."""
    (clone_dir / "config" / "ood-on.yaml").write_text("model_groups:\n  ood: {enabled: true}\n")
    code, output = dry_run(clone_dir, None, "--configfile", "config/config.yaml", "config/ood-on.yaml")
    assert code == 0, output[-3000:]
    config = copy.deepcopy(paper_config)
    config["model_groups"]["ood"]["enabled"] = True
    assert job_counts(output) == expected_counts(config)


def _stand_in_inputs(root: Path) -> None:
    """Two downloaded checkpoints (config.json only) and one prepared dataset with a token profile."""
    configs = REPO / "tests" / "data" / "model-configs"
    for model, source in (("llama2-7b-4k", "Llama-2-7b-hf"), ("llama2-13b-64k", "Llama-2-13b-hf")):
        (root / "resources" / "models" / model).mkdir(parents=True, exist_ok=True)
        shutil.copy(configs / f"{source}.json", root / "resources" / "models" / model / "config.json")
    data = root / "resources" / "data" / "llama2" / "gsm"
    data.mkdir(parents=True, exist_ok=True)
    # 130 tokens a shot: the 511-shot prompt has 1 + 66,430 + 200 + 8 tokens; max_model_len 67,039 with 400 generated
    profile = {"shot_block": [130 * k for k in range(1025)], "max_query": 200, "bos": 1}
    shots = "".join(json.dumps({"input": f"q{i}", "reference": "a"}) + "\n" for i in range(1024))
    (data / "shots.jsonl").write_text(shots)
    (data / "test.jsonl").write_text(json.dumps({"id": "0", "input": "q", "reference": "a"}) + "\n")
    (data / "manifest.json").write_text(json.dumps({"dataset": "gsm", "max_new_tokens": 400, "prompt_tokens": profile}))


def _evaluate_resources(output: str) -> dict[str, str]:
    """wildcards -> the resources line of each planned evaluate job."""
    found = {}
    for block in output.split("rule evaluate:")[1:]:
        wildcards = re.search(r"wildcards: (.*)", block).group(1)
        found[wildcards] = re.search(r"resources: (.*)", block).group(1)
    return found


def test_evaluate_jobs_request_exactly_their_planned_gpus(tmp_path, paper_config):
    """With a job's inputs on disk the gpu resource is its plan's; without them Snakemake waits (<TBD>)."""
    root = clone(tmp_path / "clone")
    _stand_in_inputs(root)
    code, output = dry_run(root, None, "--configfile", "config/config.yaml")
    assert code == 0, output[-3000:]
    resources = _evaluate_resources(output)
    assert len(resources) == 864
    # 13B at 67,039 tokens: 24.24 + 51.1 KV + 4 > 71.64 GiB on one 80 GB GPU; 7B: 12.55 + 32.7 + 4 fits one
    assert "gpu=2" in resources["model=llama2-13b-64k, dataset=gsm"].split(", ")
    assert "gpu=1" in resources["model=llama2-7b-4k, dataset=gsm"].split(", ")
    assert "gpu=<TBD>" in resources["model=llama2-13b-128k, dataset=gsm"].split(", ")
    larger = dict(paper_config)
    larger["evaluation"] = {**paper_config["evaluation"], "gpu_memory_gib": 139.8}
    code, output = dry_run(root, larger)
    assert code == 0, output[-3000:]
    assert "gpu=1" in _evaluate_resources(output)["model=llama2-13b-64k, dataset=gsm"].split(", ")


def test_one_evaluate_job_per_model_requests_the_largest_plan_over_its_datasets(tmp_path, paper_config):
    """evaluation.job_per: model: 12 evaluate jobs instead of 864; each asks for the GPUs of the most demanding
    of its datasets (here gsm's 511-shot prompts; every other dataset has short ones), once all are prepared."""
    root = clone(tmp_path / "clone")
    _stand_in_inputs(root)
    config = copy.deepcopy(paper_config)
    config["evaluation"]["job_per"] = "model"
    code, output = dry_run(root, config)
    assert code == 0, output[-3000:]
    counts = job_counts(output)
    assert counts["evaluate"] == expected_counts(config)["evaluate"] == 12  # (2 models and gsm staged as done)
    assert "gpu=<TBD>" in _evaluate_resources(output)["model=llama2-13b-64k"].split(", ")  # data not all prepared
    gsm = root / "resources" / "data" / "llama2" / "gsm"
    short = json.loads((gsm / "manifest.json").read_text())
    short["prompt_tokens"] = {"shot_block": [10 * k for k in range(1025)], "max_query": 20, "bos": 1}
    for dataset in ctxconfig.dataset_names(config):
        if dataset != "gsm":
            shutil.copytree(gsm, gsm.parent / dataset)
            (gsm.parent / dataset / "manifest.json").write_text(json.dumps({**short, "dataset": dataset}))
    code, output = dry_run(root, config)
    assert code == 0, output[-3000:]
    resources = _evaluate_resources(output)
    assert "gpu=2" in resources["model=llama2-13b-64k"].split(", ")  # gsm's plan, the largest
    assert "gpu=1" in resources["model=llama2-7b-4k"].split(", ")
    single = copy.deepcopy(paper_config)
    code, output = dry_run(root, single)
    assert code == 0, output[-3000:]
    assert "gpu=1" in _evaluate_resources(output)["model=llama2-13b-64k, dataset=arc-easy"].split(", ")


def _enable_group(clone_dir: Path, paper_config: dict, group: str) -> tuple[dict, dict, dict]:
    """Dry-run the paper with and without ``group`` enabled: (counts before, config, counts after)."""
    base = job_counts(dry_run(clone_dir, paper_config)[1])
    config = copy.deepcopy(paper_config)
    config["model_groups"][group]["enabled"] = True
    code, output = dry_run(clone_dir, config)
    assert code == 0, output[-3000:]
    counts = job_counts(output)
    assert counts == expected_counts(config)
    return base, config, counts


def test_enabling_ood_adds_only_its_jobs(clone_dir, paper_config):
    base, config, counts = _enable_group(clone_dir, paper_config, "ood")
    ood = [m for m, s in config["models"].items() if s["group"] == "ood"]
    new_families = {config["models"][m]["family"] for m in ood} - {"llama2"}
    datasets = counts["evaluate"] // (12 + len(ood))
    assert counts["download_model"] - base["download_model"] == len(ood)
    assert counts["evaluate"] - base["evaluate"] == len(ood) * datasets
    # the new tokenizer families (Qwen2.5, Gemma-2) need their own prepared data; Llama-2-70B reuses llama2's
    assert counts["prepare_dataset"] - base["prepare_dataset"] == len(new_families) * datasets
    assert counts["fit"] - base["fit"] == len(config["tasks"])  # the held-out-compute fit of each task
    assert counts["model_info"] - base["model_info"] == len(ood)


def _extend_resources(output: str) -> dict[str, str]:
    """model -> the resources line of each planned extend job."""
    return {re.search(r"wildcards: model=(\S+)", block).group(1): re.search(r"resources: (.*)", block).group(1)
            for block in output.split("rule extend_model:")[1:]}  # fmt: skip


def test_enabling_pi_builds_its_models_by_extension(clone_dir, paper_config):
    """The PI models come from the extension stage (from llama2-7b-4k, linear RoPE): 4 extend jobs and one fetch of
    the training corpus, no download of a guessed repository id."""
    base, config, counts = _enable_group(clone_dir, paper_config, "pi")
    pi = [m for m, s in config["models"].items() if s["group"] == "pi"]
    assert counts["extend_model"] == len(pi) == 4 and counts["fetch_extension_data"] == 1
    assert counts["download_model"] == base["download_model"]
    assert counts["evaluate"] - base["evaluate"] == len(pi) * 72  # same llama2 family: no new data preparation
    assert counts["prepare_dataset"] == base["prepare_dataset"] and counts["fit"] == base["fit"]
    code, output = dry_run(clone_dir, config, "--printshellcmds")
    assert code == 0 and "PI-Llama" not in output
    assert "repo_id=emozilla/pg_books-tokenized-bos-eos-chunked-65536" in output.replace('"', "").replace(": ", "=")
    resources = _extend_resources(output)
    assert sorted(resources) == sorted(pi)
    # the base is not downloaded in this clone: the GPU and memory requests wait for its config.json
    assert all({"gpu=<TBD>", "mem_mb=<TBD>"} <= set(r.split(", ")) for r in resources.values()), resources
    assert "--base resources/models/llama2-7b-4k" in output and "--data-dir resources/extension-data/pg_books" in output


def test_extend_jobs_request_their_gpus_once_the_base_is_there_and_can_train_on_a_local_corpus(tmp_path, paper_config):
    """With llama2-7b-4k's config.json on disk, each PI job asks for extension.gpus (8, the official layout, checked
    against the plan) and the host memory the plan needs; a corpus given by path is used in place, not fetched."""
    root = clone(tmp_path / "clone")
    _stand_in_inputs(root)
    (root / "corpus").mkdir()
    config = copy.deepcopy(paper_config)
    config["model_groups"]["pi"]["enabled"] = True
    config["extension_data"]["pg_books"]["path"] = "corpus"
    code, output = dry_run(root, config, "--printshellcmds")
    assert code == 0, output[-3000:]
    counts = job_counts(output)
    assert counts["extend_model"] == 4 and "fetch_extension_data" not in counts
    resources = _extend_resources(output)
    assert all("gpu=8" in r.split(", ") for r in resources.values()), resources
    mem = {int(re.search(r"mem_mb=(\d+)", r).group(1)) for r in resources.values()}
    assert len(mem) == 1 and mem.pop() >= config["extension"]["mem_mb"]
    assert output.count("--data-dir corpus ") == 4 and "--processes 8" in output


def test_rebuild_from_base_extends_the_yarn_models_instead_of_downloading_them(clone_dir, paper_config):
    config = copy.deepcopy(paper_config)
    config["extension"]["rebuild_from_base"] = True
    code, output = dry_run(clone_dir, config)
    assert code == 0, output[-3000:]
    counts = job_counts(output)
    assert counts == expected_counts(config)
    assert counts["download_model"] == 2 and counts["extend_model"] == 10 and counts["fetch_extension_data"] == 1


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["evaluation"].__setitem__("batch_size", "eight"), "evaluation.batch_size"),
        (lambda c: c["evaluation"].__setitem__("batchsize", 8), "evaluation.batchsize"),
        (lambda c: c["models"]["llama2-7b-8k"].__setitem__("n_ctx", -1), "models.llama2-7b-8k.n_ctx"),
        (lambda c: c["tasks"]["arithmetic"].append("gsm9k"), "gsm9k"),
        (lambda c: c["fit"].__setitem__("objective", "huber"), "fit.objective"),
        (lambda c: c["fit"].__setitem__("max_exponent", 0), "fit.max_exponent"),
        (lambda c: c["evaluation"].__setitem__("job_per", "task"), "evaluation.job_per"),
        (lambda c: c["models"]["llama2-7b-pi-8k"]["extend"].__setitem__("lr_schedul", "x"), "models.llama2-7b-pi-8k.extend"),
        (lambda c: c["models"]["llama2-7b-pi-8k"]["extend"].__setitem__("data", {"source": "pg19"}), "'pg19' is not listed under extension_data"),
        (lambda c: c["extension"].__setitem__("compute_tokens", "all"), "extension.compute_tokens"),
    ],
)
def test_bad_config_fails_before_any_job_naming_the_key(clone_dir, paper_config, edit, message):
    config = copy.deepcopy(paper_config)
    edit(config)
    code, output = dry_run(clone_dir, config)
    assert code != 0
    assert message in output
    assert "Traceback" not in output
    assert "Job stats" not in output


def test_validate_config_fills_defaults(paper_config):
    config = copy.deepcopy(paper_config)
    del config["fit"]
    ctxconfig.validate_config(config)
    assert config["fit"] == {
        "objective": "mse", "penalty": "paper", "law": "paper", "seeds": 5, "max_exponent": 3, "bootstrap": 1000,
        "bootstrap_unit": "instances", "per_dataset": False, "groups": ["yarn"],
    }


def test_lint_reports_no_errors(clone_dir):
    result = snakemake_in(clone_dir, "--lint")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_job_records_go_under_logs_and_figures_follow_the_task_order(clone_dir, paper_config):
    """Benchmark files go beside the job logs (benchmarks/ holds only scripts); the figures get the config's task
    order (a reordered ``tasks`` mapping reorders the panels)."""
    config = copy.deepcopy(paper_config)
    config["tasks"] = dict(reversed(list(config["tasks"].items())))
    code, output = dry_run(clone_dir, config, "--printshellcmds")
    assert code == 0, output[-3000:]
    benchmarks = re.findall(r"^\s*benchmark: (\S+)$", output, flags=re.MULTILINE)
    counts = job_counts(output)
    assert len(benchmarks) == counts["evaluate"] + counts["fit"] + counts["compare"]
    assert all(path.startswith("logs/benchmarks/") for path in benchmarks), benchmarks[:3]
    settings = re.search(r"python -m ctxscale\.figures .*--settings '([^']+)'", output).group(1)
    assert json.loads(settings)["tasks"] == list(config["tasks"]) == ["translation", "common-sense", "arithmetic"]
    # Table 1 takes an extended model's tokens from where extension.compute_tokens says, so the rule passes it
    tables = json.loads(re.search(r"python -m ctxscale\.tables write --config-json '([^']+)'", output).group(1))
    assert tables["extension"] == {"compute_tokens": config["extension"]["compute_tokens"]}
