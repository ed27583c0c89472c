"""Workflow configuration: schema validation with defaults, cross-reference checks, and the narrow views
each workflow step receives.

Validation fails with a one-line :class:`~ctxscale.errors.UserError` that names the offending key, e.g.
``config error at evaluation.batch_size: 'eight' is not of type 'integer'``. Defaults from the schema are
filled in, so every downstream reader sees a complete config.

The schema is package data (``ctxscale/schemas/config.schema.yaml``, read through :mod:`importlib.resources`):
the library and the workflow (``workflow/rules/common.smk`` validates through :func:`validate_config`) read the
same file, and an installed ``ctxscale`` (a wheel, ``pip install .``) needs nothing outside its package.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ctxscale.errors import UserError

# The schema's place inside the package (package data, pyproject's [tool.setuptools.package-data]).
SCHEMA_RESOURCE = "schemas/config.schema.yaml"

# Evaluation keys that size or group the jobs (resources, GPU-plan inputs of ctxscale.plan, job_per), not their
# results: kept out of the evaluation settings and the cache key, so that changing them never reruns an evaluation.
EVALUATION_RESOURCE_KEYS = (
    "threads", "gpus", "mem_mb", "runtime", "gpu_memory_gib", "gpu_overhead_gib", "max_gpus_per_job", "job_per",
)


def _validator_with_defaults(schema: dict) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator that also fills in ``default`` values of object properties."""
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    extended = jsonschema.validators.extend(base, {"properties": set_defaults})
    return extended(schema)


def _error_path(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    return path or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    """One line naming the key; for unknown keys, name the key itself rather than its parent."""
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in allowed)
        where = _error_path(error)
        prefix = "" if where == "(top level)" else where + "."
        if unknown:
            return f"config error: unknown key {prefix}{unknown[0]} (allowed here: {', '.join(sorted(allowed))})"
    if error.context:  # oneOf/anyOf: report the most specific sub-error
        best = jsonschema.exceptions.best_match(error.context)
        return f"config error at {_error_path(error)}: {best.message}"
    return f"config error at {_error_path(error)}: {error.message}"


def load_schema(path: Path | str | None = None) -> dict:
    """The config schema: the package's own (``ctxscale/schemas/config.schema.yaml``) unless ``path`` names
    another file."""
    if path is None:
        return yaml.safe_load(importlib.resources.files("ctxscale").joinpath(SCHEMA_RESOURCE).read_text("utf-8"))
    with open(path) as handle:
        return yaml.safe_load(handle)


@functools.lru_cache(maxsize=1)
def _project_schema() -> dict:
    return load_schema()


def _subschema(name: str) -> dict:
    """A top-level section (``"evaluation"``) or ``$defs`` entry (``"model"``) of the schema, with the ``$defs``
    its references need."""
    schema = _project_schema()
    definitions = schema.get("$defs", {})
    return {**(schema["properties"].get(name) or definitions[name]), "$defs": definitions}


@functools.lru_cache(maxsize=None)
def _section_defaults(section: str) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for _ in _validator_with_defaults(_subschema(section)).iter_errors(defaults):  # filled while validating
        pass
    return defaults


def schema_defaults(section: str) -> dict[str, Any]:
    """The defaults the schema declares for one top-level section (``"evaluation"``, ``"data"``, ...) or one of
    its ``$defs`` (``"model"``), nested defaults filled in: the one source of every default, which the
    library's own defaults read. Computed once per section (the GPU plan asks for every job); a fresh copy."""
    return copy.deepcopy(_section_defaults(section))


def validate_definition(instance: Any, definition: str, where: str) -> dict:
    """Validate ``instance`` in place against the schema's ``$defs/<definition>``, filling its defaults (e.g.
    a synthetic generator spec given on a command line); errors are one line starting with ``where``."""
    validator = _validator_with_defaults(_subschema(definition))
    errors = sorted(validator.iter_errors(instance), key=lambda e: len(list(e.absolute_path)))
    if errors:
        raise UserError(_describe(errors[0]).replace("config error", where, 1))
    return instance


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Validate ``config`` in place (filling defaults) and check cross-references. Returns it."""
    if not isinstance(config, dict):
        raise UserError("config error: the config file must be a YAML mapping")
    schema = schema if schema is not None else load_schema()
    validator = _validator_with_defaults(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        raise UserError(_describe(errors[0]))
    _check_references(config)
    return config


def _check_references(config: dict) -> None:
    models = config["models"]
    groups = config.get("model_groups", {})
    for name, spec in models.items():
        if spec["group"] not in groups:
            raise UserError(
                f"config error at models.{name}.group: group '{spec['group']}' is not listed under model_groups"
            )
        if "extends" in spec and spec["extends"] not in models:
            raise UserError(f"config error at models.{name}.extends: unknown model '{spec['extends']}'")
        if built_by_extension(config, name):
            _check_extension(config, name)
    known = _known_datasets(config)
    for task, datasets in config["tasks"].items():
        for dataset in datasets:
            if dataset not in known:
                raise UserError(
                    f"config error at tasks.{task}: unknown dataset '{dataset}' "
                    f"(known: {', '.join(sorted(known))})"
                )
    for experiment, settings in config.get("experiments", {}).items():
        for model in settings.get("holdout_models", []):
            if model not in models:
                raise UserError(f"config error at experiments.{experiment}.holdout_models: unknown model '{model}'")
        for group in settings.get("holdout_groups", []):
            if group not in groups:
                raise UserError(f"config error at experiments.{experiment}.holdout_groups: unknown group '{group}'")
    for group in config.get("fit", {}).get("groups", []):
        if group not in groups:
            raise UserError(f"config error at fit.groups: unknown group '{group}'")
    fig1_model = config.get("figures", {}).get("fig1_model")
    if fig1_model is not None and fig1_model not in models:
        raise UserError(f"config error at figures.fig1_model: unknown model '{fig1_model}'")
    fig1_task = config.get("figures", {}).get("fig1_task")
    if fig1_task is not None and fig1_task not in config["tasks"]:
        raise UserError(f"config error at figures.fig1_task: unknown task '{fig1_task}'")
    if not enabled_models(config):
        raise UserError("config error at model_groups: no model is in an enabled group")


def built_by_extension(config: dict, model: str) -> bool:
    """Whether the workflow builds ``model`` by context extension (rule extend_model): ``source: extend``, or a
    downloadable model naming ``extends`` and ``extend`` when ``extension.rebuild_from_base`` is set."""
    spec = config["models"][model]
    if spec["source"] == "extend":
        return True
    rebuild = config.get("extension", {}).get("rebuild_from_base", False)
    return rebuild and spec["source"] == "hf" and "extends" in spec and "extend" in spec


def model_source(config: dict, model: str) -> str:
    """The rule that makes ``model``'s checkpoint: ``extend`` for models built by extension, else its source."""
    return "extend" if built_by_extension(config, model) else config["models"][model]["source"]


def extension_spec(config: dict, model: str, overrides: dict | None = None) -> dict[str, Any]:
    """The recipe ``ctxscale.extend`` receives: ``models.<model>.extend`` (with ``overrides`` on top, e.g.
    ``ctxscale plan --set extend.KEY=V``) validated, the schema's defaults filled in, plus the model's ``n_ctx``
    and ``rope_scaling``."""
    spec = config["models"][model]
    recipe = {**copy.deepcopy(spec.get("extend") or {}), **(overrides or {})}
    validate_definition(recipe, "extend_spec", f"config error in models.{model}.extend")
    return {**recipe, "n_ctx": spec["n_ctx"], "rope_scaling": spec.get("rope_scaling")}


def _check_extension(config: dict, name: str) -> None:
    spec = config["models"][name]
    where = f"config error at models.{name}"
    if "extend" not in spec:
        raise UserError(f"{where}.extend: a model built by extension needs its recipe (extend: {{}} for the defaults)")
    if "extends" not in spec:
        raise UserError(f"{where}.extends: a model built by extension must name the model it extends")
    if built_by_extension(config, spec["extends"]):
        raise UserError(f"{where}.extends: '{spec['extends']}' is itself built by extension; extend a base model")
    scaling = spec.get("rope_scaling") or {}
    if scaling.get("rope_type") not in ("yarn", "linear"):
        raise UserError(f"{where}.rope_scaling: the extension stage trains yarn or linear RoPE scaling, "
                        f"got {scaling.get('rope_type')!r}")
    recipe = extension_spec(config, name)
    source = recipe["data"]["source"]
    if source != "synthetic" and source not in config.get("extension_data", {}):
        raise UserError(f"{where}.extend.data.source: '{source}' is not listed under extension_data "
                        f"(known: {', '.join(sorted(config.get('extension_data', {}))) or 'none'}; or synthetic)")


def _known_datasets(config: dict) -> set[str]:
    if config["data"]["source"] == "synthetic":
        return set(config["data"]["synthetic"])
    from ctxscale.datasets.registry import DATASETS

    return set(DATASETS)


def load_config(path: Path | str) -> dict:
    """Read and validate a workflow config YAML file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file not found: {path}")
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return validate_config(config)


# ---------------------------------------------------------------- views used by the workflow rules


def enabled_models(config: dict) -> list[str]:
    """Models whose group is enabled, in config order."""
    groups = config.get("model_groups", {})
    return [
        name
        for name, spec in config["models"].items()
        if groups[spec["group"]]["enabled"]
    ]


def dataset_names(config: dict) -> list[str]:
    """Every dataset the tasks use, with deepmind-math expanded to one dataset per config."""
    names = [d for datasets in config["tasks"].values() for d in datasets]
    if config["data"]["source"] == "synthetic":
        return names
    from ctxscale.datasets.registry import expand_dataset_names

    return expand_dataset_names(names, config["data"]["deepmind_math_configs"])


def dataset_task(config: dict) -> dict[str, str]:
    """Expanded dataset name -> task category."""
    mapping = {}
    for task, datasets in config["tasks"].items():
        for dataset in datasets:
            mapping[dataset] = task
    for name in dataset_names(config):
        mapping.setdefault(name, mapping.get(name.split(".")[0]))
    return mapping


def holdout_models(config: dict, experiment: str = "held-out-compute") -> list[str]:
    """Enabled models held out of the fit by the held-out-compute experiment."""
    settings = config.get("experiments", {}).get(experiment, {})
    enabled = enabled_models(config)
    groups = set(settings.get("holdout_groups", []))
    named = set(settings.get("holdout_models", []))
    return [m for m in enabled if m in named or config["models"][m]["group"] in groups]


def fit_models(config: dict, experiment: str) -> list[str]:
    """Models a fit trains on: enabled models of the fit groups, minus the held-out ones for held-out-compute."""
    groups = set(config["fit"]["groups"])
    models = [m for m in enabled_models(config) if config["models"][m]["group"] in groups]
    if experiment == "held-out-compute":
        held_out = set(holdout_models(config))
        models = [m for m in models if m not in held_out]
    return models


def evaluation_settings(config: dict, model: str) -> dict[str, Any]:
    """The settings that determine an evaluation's results: evaluation subtree (minus job sizing) + model fields."""
    settings = {k: v for k, v in config.get("evaluation", {}).items() if k not in EVALUATION_RESOURCE_KEYS}
    spec = config["models"][model]
    settings.update(
        revision=spec["revision"],
        n_ctx=spec["n_ctx"],
        rope_scaling=spec.get("rope_scaling"),
    )
    return settings
