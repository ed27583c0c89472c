"""Cluster execution (issue 6): ``workflow/profiles/slurm`` checked on its own, then proven on a real
one-node SLURM cluster that the ``slurm_cluster`` fixture starts on the test machine.

The cluster test runs a reduced miniature (one base model and one extension of it, one dataset, four
shot counts, the in-distribution fit, figures and tables) twice from scratch: locally, then through
``--profile workflow/profiles/slurm`` with the test cluster's site values on the command line. It
checks that

* every job that is not a local rule went through ``sbatch``: the controller's own records hold one
  COMPLETED job per job of the dry run, named by the plugin's ``rule_<rule>_wildcards_<values>``
  comment, and the local rules (aggregate, model_info) never reached the scheduler;
* the GPU rule asked for the site's GPU type (``--gpus=<type>:1``) and the scheduler granted it;
* a job made to fail once (the first ``python -m ctxscale.evaluate``, through a ``python`` shim first
  on PATH, which sbatch's ``--export=ALL`` carries into the jobs) is retried with twice the memory
  and time, as the rule's attempt-scaled resources say, and the run still completes;
* the outputs equal the local run's: byte for byte the observation tables, fits, tables, figures and
  trained weights; equal per-instance predictions (only run metadata such as paths and wall times differ).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (the session fixture)

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
DEMO_CONFIG = REPO / "config" / "demo.yaml"
FLAKY_MODULE = "ctxscale.evaluate"
FLAKY_RULE = "evaluate"
SLURM_RUN_TIMEOUT_S = 420


def _environment(cache: Path, *first_on_path: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment for Snakemake and its jobs: the interpreter running the tests first on PATH
    (rules call ``python``), and the caches Snakemake, Hugging Face datasets and matplotlib write kept in
    ``cache`` (a temporary directory) instead of the home directory."""
    base = dict(os.environ if base is None else base)
    path = [str(p) for p in first_on_path] + [str(Path(sys.executable).parent), base.get("PATH", "")]
    return {
        **base,
        "PATH": os.pathsep.join(path),
        "XDG_CACHE_HOME": str(cache / "xdg"),
        "HF_HOME": str(cache / "huggingface"),
        "MPLCONFIGDIR": str(cache / "matplotlib"),
    }


def _snakemake(workdir: Path, configfile: Path, *args: str, env: dict[str, str], timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
         "--configfile", str(configfile), *args],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout,
    )


def _tail(result: subprocess.CompletedProcess, chars: int = 6000) -> str:
    return (result.stdout + result.stderr)[-chars:]


def _reduced_config(directory: Path) -> Path:
    """The miniature cut to what shows cluster behaviour in a few minutes on two cores.

    The evaluate jobs ask for one GPU, as on a real cluster; the test cluster has a (stand-in) one.
    """
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    models = config["models"]
    base = next(name for name, spec in models.items() if "extends" not in spec)
    extension = next(name for name, spec in models.items() if spec.get("extends") == base)
    # The two models keep the demo's recipe, shortened: what this test shows is cluster behaviour (submission,
    # resources, retries, logs), which does not depend on how well they learn; the full recipe cost minutes of CI.
    config["models"] = {base: models[base], extension: models[extension]}
    models[base]["tiny"]["steps"] = 300
    models[extension]["extend"] = {**models[extension]["extend"], "updates": 20, "warmup_updates": 2,
                                   "checkpoint_every": 20}
    task, datasets = next(iter(config["tasks"].items()))
    config["tasks"] = {task: datasets[:1]}
    config["data"]["synthetic"] = {datasets[0]: config["data"]["synthetic"][datasets[0]]}
    config["data"]["max_eval_samples"] = min(config["data"]["max_eval_samples"], 16)
    config["shots"] = sorted(config["shots"])[:4]
    config["evaluation"]["gpus"] = 1
    config["fit"].update(seeds=1, bootstrap=10)
    config["experiments"] = {"in-distribution": {"enabled": True}}
    # Figure settings that name a task, a model or a context size must name ones still in the config.
    wanted = {
        "fig1_task": task,
        "fig1_model": extension,
        "contour_n_ctx": models[base]["n_ctx"],
        "heldout_context_n_ctx": models[extension]["n_ctx"],
    }
    config["figures"].update({key: value for key, value in wanted.items() if key in config["figures"]})
    path = directory / "reduced.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _jobs_in_log(output: str) -> tuple[Counter, Counter]:
    """(``rule`` jobs, ``localrule`` jobs) announced in a Snakemake log, each as the plugin's comment
    ``rule_<rule>[_wildcards_<v1_v2>]``. A dry run announces every job as ``rule``."""
    remote, local = Counter(), Counter()
    for block in re.split(r"^(?=(?:local)?rule \S+:$)", output, flags=re.MULTILINE):
        header = re.match(r"(local)?rule (\S+):$", block, flags=re.MULTILINE)
        if not header:
            continue
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, flags=re.MULTILINE)
        comment = f"rule_{header.group(2)}"
        if wildcards:
            values = [item.split("=", 1)[1] for item in wildcards.group(1).split(", ")]
            comment += "_wildcards_" + "_".join(values).replace("/", "_")
        (local if header.group(1) else remote)[comment] += 1
    return remote, local


def _declared_local_rules() -> set[str]:
    """Rules the workflow keeps off the cluster (``localrules:``), plus the action-less target ``all``."""
    names = {"all"}
    for smk in [SNAKEFILE, *(REPO / "workflow" / "rules").glob("*.smk")]:
        for block in re.findall(r"^localrules:\s*\n((?:[ \t]+\w+,?[ \t]*\n)+)", smk.read_text(), re.MULTILINE):
            names.update(re.findall(r"\w+", block))
    return names


def _rule_of(comment: str) -> str:
    return comment.removeprefix("rule_").split("_wildcards_", 1)[0]


def _job_total(output: str) -> int:
    return int(re.search(r"^total\s+(\d+)$", output, flags=re.MULTILINE).group(1))


def _python_shim(directory: Path, marker: Path) -> Path:
    """A ``python`` that fails the first ``-m FLAKY_MODULE`` call (mkdir is atomic) and runs the real one otherwise."""
    directory.mkdir()
    shim = directory / "python"
    shim.write_text(
        "#!/bin/sh\n"
        f'case " $* " in\n'
        f'  *" -m {FLAKY_MODULE} "*)\n'
        f'    if mkdir "{marker}" 2>/dev/null; then echo "injected failure (tests/test_slurm.py)" >&2; exit 1; fi;;\n'
        "esac\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    shim.chmod(0o755)
    return directory


def _minutes(limit: str) -> int:
    """Minutes of a SLURM time limit written as [D-]HH:MM:SS."""
    days, _, clock = limit.rpartition("-")
    hours, minutes, _seconds = (int(part) for part in clock.split(":"))
    return (int(days or 0) * 24 + hours) * 60 + minutes


def _megabytes(memory: str) -> int:
    """Megabytes of a SLURM memory figure such as ``2000M`` or ``4G``."""
    number, unit = float(memory[:-1]), memory[-1]
    return round(number * {"M": 1, "G": 1024, "T": 1024**2}[unit])


def _without_key(value, key: str):
    """``value`` (parsed JSON) with ``key`` removed from every mapping at any depth."""
    if isinstance(value, dict):
        return {k: _without_key(v, key) for k, v in value.items() if k != key}
    if isinstance(value, list):
        return [_without_key(v, key) for v in value]
    return value


# -- the profile on its own (no cluster needed) --------------------------------------------------


def test_every_profile_key_is_commented():
    lines = (PROFILE / "config.yaml").read_text().splitlines()
    uncommented = []
    for number, line in enumerate(lines):
        if not re.match(r"^\s*[\w-]+:", line):
            continue
        previous = next((lines[i].strip() for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        if "#" not in line and not previous.startswith("#"):
            uncommented.append(line.strip())
    assert uncommented == []


def test_profile_settings_avoid_the_known_traps():
    from snakemake.cli import parse_args

    _parser, args = parse_args(["--profile", str(PROFILE), "--workflow-profile", "none", "-n"])
    assert args.executor == "slurm"
    # sacct hangs the run on clusters without accounting; squeue works on every cluster.
    assert args.slurm_status_command == "squeue"
    # An account given without slurmdbd fails validation: it must stay a commented placeholder.
    assert "slurm_account" not in args.default_resources
    assert args.slurm_keep_successful_logs is True
    assert str(args.slurm_logdir) == "logs/slurm"
    assert "slurm_partition" in args.default_resources
    assert "slurm_partition" in args.set_resources["evaluate"]
    # extension jobs: one node (single-node torchrun), and SIGUSR1 5 min before the limit so they checkpoint
    assert {"nodes", "slurm_extra", "slurm_partition"} <= set(args.set_resources["extend_model"])
    extend = yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"]["extend_model"]
    assert extend["nodes"] == 1 and extend["slurm_extra"] == "'--signal=USR1@300'"
    assert args.retries >= 1


def test_dry_run_with_the_profile_needs_no_cluster(tmp_path):
    # An empty SLURM config: every SLURM command fails at once, even where SLURM is installed or running.
    no_cluster = tmp_path / "slurm.conf"
    no_cluster.write_text("")
    env = _environment(tmp_path / "cache")
    env["SLURM_CONF"] = str(no_cluster)
    result = _snakemake(tmp_path / "work", DEMO_CONFIG, "-n", "--profile", str(PROFILE), env=env, timeout=120)
    assert result.returncode == 0, _tail(result)
    assert f"Using profile {PROFILE}" in result.stderr
    planned, _ = _jobs_in_log(result.stdout + result.stderr)
    assert sum(planned.values()) == _job_total(result.stdout + result.stderr)
    assert any(comment.startswith(f"rule_{FLAKY_RULE}_wildcards_") for comment in planned)


# -- the real cluster ------------------------------------------------------------------------------


@pytest.mark.slurm
def test_miniature_through_slurm_matches_local_run_and_survives_a_failed_job(
    slurm_cluster: SlurmCluster, tmp_path: Path
):
    config = _reduced_config(tmp_path)

    start = time.monotonic()
    local_dir = tmp_path / "local"
    local = _snakemake(
        local_dir, config, "--workflow-profile", "none", "--cores", "2", env=_environment(tmp_path / "local-cache")
    )
    assert local.returncode == 0, _tail(local)
    local_s = time.monotonic() - start

    # The site values of the test cluster: what a user fills into the profile's SITE placeholders.
    site_args = [
        "--profile", str(PROFILE),
        "--default-resources", f"slurm_partition={slurm_cluster.partition}", "runtime=20", "mem_mb=1000",
        "--set-resources", f"{FLAKY_RULE}:slurm_partition={slurm_cluster.partition}",
        f"{FLAKY_RULE}:gpu_model={slurm_cluster.gpu_type}",
        # the extension jobs' lines of the profile, repeated (a command-line --set-resources replaces the map)
        f"extend_model:slurm_partition={slurm_cluster.partition}", "extend_model:nodes=1",
        "extend_model:slurm_extra='--signal=USR1@300'",
        # Speed only: the tiny jobs end within seconds, the production default waits 40 s first.
        "--slurm-init-seconds-before-status-checks", "4",
    ]
    slurm_dir = tmp_path / "slurm"
    marker = tmp_path / "evaluate-failed-once"
    env = _environment(tmp_path / "slurm-cache", _python_shim(tmp_path / "shim", marker), base=slurm_cluster.env)

    plan = _snakemake(slurm_dir, config, "-n", *site_args, env=env, timeout=120)
    assert plan.returncode == 0, _tail(plan)
    planned, _ = _jobs_in_log(plan.stdout + plan.stderr)
    assert sum(planned.values()) == _job_total(plan.stdout + plan.stderr)
    assert all(count == 1 for count in planned.values()), planned
    local_rules = _declared_local_rules()
    planned_cluster = Counter({c: n for c, n in planned.items() if _rule_of(c) not in local_rules})
    planned_local = Counter({c: n for c, n in planned.items() if _rule_of(c) in local_rules})
    assert planned_cluster and planned_local

    start = time.monotonic()
    run = _snakemake(slurm_dir, config, *site_args, env=env, timeout=SLURM_RUN_TIMEOUT_S)
    slurm_s = time.monotonic() - start
    output = run.stdout + run.stderr
    (tmp_path / "slurm-run.log").write_text(output)
    assert run.returncode == 0, _tail(run) + "\n" + slurm_cluster.log_tail()
    print(f"\nlocal run {local_s:.0f} s, SLURM run {slurm_s:.0f} s, {sum(planned_cluster.values())} cluster jobs")

    # Snakemake ran the planned jobs, the local rules (and only they) on the submitting machine ...
    submitted, ran_locally = _jobs_in_log(output)
    assert ran_locally == planned_local
    assert set(submitted) == set(planned_cluster)  # the retried job is announced twice
    # ... and every other job went through sbatch: the controller recorded it, under this run's id.
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    records = [job for job in slurm_cluster.jobs() if job.name == run_id]
    completed = Counter(job.comment for job in records if job.state == "COMPLETED")
    assert completed == planned_cluster
    for job in records:
        if job.state == "COMPLETED":
            log = Path(job.std_out)
            assert log.is_relative_to(slurm_dir / "logs" / "slurm"), job
            assert log.is_file(), job

    # The GPU rule asked for the site's GPU type and got it.
    evaluate_jobs = [job for job in records if job.comment.startswith(f"rule_{FLAKY_RULE}_")]
    assert evaluate_jobs and all(job.tres_per_job == f"gres:gpu:{slurm_cluster.gpu_type}:1" for job in evaluate_jobs)

    # Exactly one job failed, the first evaluate; its retry ran with doubled memory and time, and completed.
    assert marker.is_dir()
    failed = [job for job in records if job.state != "COMPLETED"]
    assert len(failed) == 1, records
    first_try = failed[0]
    assert (first_try.state, first_try.exit_code) == ("FAILED", "1:0")
    assert first_try.comment.startswith(f"rule_{FLAKY_RULE}_wildcards_")
    retry = next(job for job in records if job.comment == first_try.comment and job.state == "COMPLETED")
    assert retry.job_id > first_try.job_id
    assert _megabytes(retry.memory) == 2 * _megabytes(first_try.memory)
    assert _minutes(retry.time_limit) == 2 * _minutes(first_try.time_limit)
    # The shim's own message went to the rule's log, which the retry replaced; sbatch's log of the first try remains.
    assert f"Error in rule {FLAKY_RULE}:" in Path(first_try.std_out).read_text()
    assert re.search(r"Trying to restart job", output)

    # The same results as the local run. Byte for byte: the observation tables, model info, fits, tables
    # and figures, and the trained weights. Equal: the per-instance predictions and scores. Only run
    # metadata may differ (absolute paths, elapsed seconds, training wall time).
    def files(root: Path, under: str) -> dict[Path, Path]:
        return {p.relative_to(root): p for p in (root / under).rglob("*") if p.is_file()}

    local_results, slurm_results = files(local_dir, "results"), files(slurm_dir, "results")
    assert sorted(slurm_results) == sorted(local_results)
    assert Path("results/observations/observations.csv") in local_results
    assert any(path.parts[1] == "fits" for path in local_results)
    evaluations = [path for path in local_results if path.parts[1] == "eval" and path.suffix == ".json"]
    assert len(evaluations) == 2 * len(yaml.safe_load(config.read_text())["shots"])
    for path in evaluations:
        local_eval, slurm_eval = (json.loads(d[path].read_text()) for d in (local_results, slurm_results))
        local_eval.pop("metadata"), slurm_eval.pop("metadata")
        assert slurm_eval == local_eval, path
    other = [path for path in local_results if path.parts[1] != "eval"]
    assert [str(p) for p in other if slurm_results[p].read_bytes() != local_results[p].read_bytes()] == []

    local_models, slurm_models = files(local_dir, "resources/models"), files(slurm_dir, "resources/models")
    assert sorted(slurm_models) == sorted(local_models)
    for path in local_models:
        if path.name == "ctxscale_training.json":
            local_info, slurm_info = (json.loads(d[path].read_text()) for d in (local_models, slurm_models))
            for timing in ("seconds", "update_seconds"):
                slurm_info, local_info = _without_key(slurm_info, timing), _without_key(local_info, timing)
            assert slurm_info == local_info, path
        else:
            assert slurm_models[path].read_bytes() == local_models[path].read_bytes(), path


@pytest.mark.slurm
def test_unedited_site_placeholders_stop_the_run_at_the_first_submission(slurm_cluster: SlurmCluster, tmp_path: Path):
    env = _environment(tmp_path / "cache", base=slurm_cluster.env)
    run = _snakemake(
        tmp_path / "work", _reduced_config(tmp_path), "--profile", str(PROFILE),
        "--slurm-init-seconds-before-status-checks", "4", env=env, timeout=180,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "sbatch: error: invalid partition specified: <cpu-partition>" in output
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    assert [job for job in slurm_cluster.jobs() if job.name == run_id] == []
