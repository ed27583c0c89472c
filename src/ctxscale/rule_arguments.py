"""What the workflow makes and the options its fit and compare rules pass, from a validated config: the
experiments' and tables' names, which experiments a config fits, and each fit's and the law comparison's
command-line options. It imports no numerical library (``ctxscale.experiments`` and ``ctxscale.compare`` bring
scipy and pandas, about 0.9 s): the workflow reads it at every parse, once per job under SLURM.
"""

from __future__ import annotations

from ctxscale import config as ctxconfig

EXPERIMENTS = ("in-distribution", "held-out-context", "held-out-compute", "leave-one-model-out", "no-penalty",
               "context-agnostic")
# Experiments whose fits carry bootstrap intervals in the workflow (parameter table, held-out bands).
BOOTSTRAPPED_EXPERIMENTS = ("in-distribution", "held-out-context", "held-out-compute")
TABLE_NAMES = ("table1", "parameters", "mae_in_distribution", "mae_heldout_context", "mae_penalty_ablation",
               "mae_heldout_compute", "mae_leave_one_model_out", "mae_summary")
COMPARISON_TABLE = "law_comparison"  # ctxscale.compare's table


def workflow_experiments(config: dict) -> list:
    """Experiments the workflow fits for a validated config: the enabled ones, held-out-compute only when
    some enabled model is held out (``compare`` is not a fit: :mod:`ctxscale.compare` writes a table)."""
    enabled = [e for e, s in config["experiments"].items() if s.get("enabled", True) and e in EXPERIMENTS]
    if "held-out-compute" in enabled and not ctxconfig.holdout_models(config):
        enabled.remove("held-out-compute")
    return enabled


def workflow_fit_arguments(config: dict, experiment: str) -> list:
    """Options of ``ctxscale fit`` for one experiment of a validated config (defaults filled by the schema).

    Only the config the experiment uses appears, so editing another experiment's settings reruns nothing.
    """
    fit = config["fit"]
    settings = config["experiments"].get(experiment, {})
    args = [f"--experiment {experiment}", f"--objective {fit['objective']}", f"--penalty {fit['penalty']}",
            f"--law {fit['law']}", f"--seeds {fit['seeds']}", f"--max-exponent {fit['max_exponent']:g}"]
    models = ctxconfig.fit_models(config, experiment)
    if experiment == "held-out-compute":
        models = models + ctxconfig.holdout_models(config)
    args.append(f"--models {','.join(models)}")
    if experiment in BOOTSTRAPPED_EXPERIMENTS and fit["bootstrap"] > 0:
        args += [f"--bootstrap {fit['bootstrap']}", f"--bootstrap-unit {fit['bootstrap_unit']}"]
    if experiment == "held-out-context":
        args.append(f"--train-max-n-pmt {settings['train_max_n_pmt']}")
    if experiment == "held-out-compute":
        args.append(f"--holdout-models {','.join(ctxconfig.holdout_models(config))}")
    if fit["per_dataset"]:
        args.append("--per-dataset")
    return args


def workflow_compare_arguments(config: dict) -> list:
    """Options of ``ctxscale compare`` for a validated workflow config (``experiments.compare``; a config
    without that entry gets the schema's experiment defaults, as the rule is defined either way)."""
    settings = {**ctxconfig.schema_defaults("experiment"), **config["experiments"].get("compare", {})}
    fit = config["fit"]
    models = ctxconfig.fit_models(config, "compare")
    args = [f"--task {task}" for task in config["tasks"]]
    args += [f"--laws {','.join(settings['laws'])}", f"--train-max-n-pmt {settings['train_max_n_pmt']}",
             f"--objective {fit['objective']}", f"--seeds {fit['seeds']}", f"--max-exponent {fit['max_exponent']:g}",
             f"--models {','.join(models)}"]
    if fit["per_dataset"]:
        args.append("--per-dataset")
    return args


def compare_enabled(config: dict) -> bool:
    return bool(config["experiments"].get("compare", {}).get("enabled", False))
