"""Config validation and the narrow views the rules receive."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ctxscale import config as ctxconfig
from ctxscale.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def paper() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.fixture
def demo() -> dict:
    return yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


def test_both_shipped_configs_validate(paper, demo):
    ctxconfig.validate_config(paper)
    ctxconfig.validate_config(demo)


def test_enabled_models_follow_groups(paper):
    ctxconfig.validate_config(paper)
    assert len(ctxconfig.enabled_models(paper)) == 12
    paper["model_groups"]["ood"]["enabled"] = True
    assert len(ctxconfig.enabled_models(paper)) == 17
    assert ctxconfig.holdout_models(paper) == [
        "qwen2.5-0.5b", "gemma-2-2b", "gemma-2-9b", "gemma-2-27b", "llama2-70b-4k"
    ]
    # held-out models are never in the fit set; the in-distribution set is the yarn group
    assert ctxconfig.fit_models(paper, "held-out-compute") == ctxconfig.fit_models(paper, "in-distribution")
    assert len(ctxconfig.fit_models(paper, "in-distribution")) == 12


def test_demo_held_out_compute_splits_models(demo):
    ctxconfig.validate_config(demo)
    held = set(ctxconfig.holdout_models(demo))
    train = set(ctxconfig.fit_models(demo, "held-out-compute"))
    assert held and train and not held & train
    assert held | train == set(ctxconfig.enabled_models(demo))


def test_evaluation_settings_exclude_job_sizing(paper):
    ctxconfig.validate_config(paper)
    settings = ctxconfig.evaluation_settings(paper, "llama2-7b-8k")
    assert not set(ctxconfig.EVALUATION_RESOURCE_KEYS) & set(settings)
    assert settings["n_ctx"] == 8192
    assert settings["rope_scaling"] == {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["models"]["llama2-7b-8k"].__setitem__("group", "nope"), "models.llama2-7b-8k.group"),
        (lambda c: c["models"]["llama2-7b-8k"].pop("repo_id"), "'repo_id' is a required property"),
        (lambda c: c["experiments"]["held-out-compute"].__setitem__("holdout_models", ["x"]), "unknown model 'x'"),
        (lambda c: c["figures"].__setitem__("fig1_task", "poetry"), "figures.fig1_task"),
        (lambda c: c["model_groups"]["yarn"].__setitem__("enabled", False), "no model is in an enabled group"),
        (lambda c: c["shots"].append(0), "shots"),
        (lambda c: c["data"].__setitem__("deepmind_math_configs", "some"), "data.deepmind_math_configs"),
    ],
)
def test_errors_name_the_key(paper, edit, message):
    config = copy.deepcopy(paper)
    edit(config)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ctxconfig.validate_config(config)


def test_load_config_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        ctxconfig.load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        ctxconfig.load_config(bad)


def test_schema_defaults_are_the_one_source_of_the_librarys_defaults():
    from ctxscale.datasets import prepare as preparation
    from ctxscale.evaluate.cli import build_parser
    from ctxscale.evaluate.settings import DEFAULT_SETTINGS, Settings

    schema = ctxconfig.load_schema()
    evaluation = ctxconfig.schema_defaults("evaluation")
    assert evaluation == {k: v["default"] for k, v in schema["properties"]["evaluation"]["properties"].items()}
    assert evaluation["max_length"] == 131072 and evaluation["tensor_parallel_size"] == "auto"
    # evaluation records carry the schema's settings (minus job sizing) and the model fields
    sizing = set(ctxconfig.EVALUATION_RESOURCE_KEYS)
    assert DEFAULT_SETTINGS == {**{k: v for k, v in evaluation.items() if k not in sizing},
                                "revision": "main", "n_ctx": None, "rope_scaling": None}
    data = ctxconfig.schema_defaults("data")
    assert (preparation.DEFAULT_SEED, preparation.DEFAULT_MAX_LENGTH_PER_EXAMPLE, preparation.DEFAULT_MAX_EVAL_SAMPLES) == (
        data["seed"], data["max_length_per_example"], data["max_eval_samples"]) == (31337, 256, 250)
    assert ctxconfig.schema_defaults("model") == {"revision": "main"}
    # the evaluate step's GPU-plan options default to the config's values, in MiB
    parser = build_parser()
    assert parser.get_default("gpu_memory_mib") == round(evaluation["gpu_memory_gib"] * 1024) == 81510
    assert parser.get_default("max_gpus_per_job") == evaluation["max_gpus_per_job"]
    # without a plan, "auto" tensor parallelism is one GPU
    assert Settings.from_mapping({}).tensor_parallel_size == 1


def test_a_validated_config_carries_every_default(demo):
    config = copy.deepcopy(demo)
    for model in config["models"].values():
        model.pop("revision", None)
    ctxconfig.validate_config(config)
    assert {m["revision"] for m in config["models"].values()} == {"main"}
    assert config["data"]["deepmind_math_configs"] == "all" and config["fit"]["groups"] == ["yarn"]
    assert ctxconfig.evaluation_settings(config, "tiny-s-128")["revision"] == "main"


def test_tiny_fit_and_figure_defaults_come_from_the_schema():
    from ctxscale import fitting, tiny
    from ctxscale.figures import inputs as figure_inputs

    assert tiny.TRAIN_DEFAULTS == ctxconfig.schema_defaults("tiny_train")
    assert tiny.TRAIN_DEFAULTS["steps"] == 900
    assert tiny.TRAIN_DEFAULTS["mix"] == {"recall": 1.0, "arithmetic": 0.5, "cipher": 1.5}
    fit = ctxconfig.schema_defaults("fit")
    assert fitting.DEFAULT_SEEDS == tuple(range(fit["seeds"])) == (0, 1, 2, 3, 4)
    assert fitting.DEFAULT_BOOTSTRAP_REPLICATES == fit["bootstrap"] == 1000
    assert fitting.DEFAULT_BOOTSTRAP_UNIT == fit["bootstrap_unit"] == "instances"
    assert figure_inputs.FigureSettings().formats == tuple(ctxconfig.schema_defaults("figures")["formats"]) == ("png", "pdf")
