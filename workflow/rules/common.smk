# Helpers shared by the rules: config validation, the model/dataset/experiment sets, and the narrow
# config views each rule receives as params (so an edit reruns only what it affects).
import json
import os
import re
import sys

from ctxscale import config as ctxconfig
from ctxscale import rule_arguments
from ctxscale.figures.registry import FIGURES
from ctxscale.plan import evaluation as evaluation_plan
from ctxscale.plan import extension as extension_plan
from ctxscale.errors import UserError

try:
    ctxconfig.validate_config(config)
except UserError as error:
    sys.exit(f"error: {error}")


wildcard_constraints:
    model="[A-Za-z0-9_.-]+",
    dataset="[A-Za-z0-9_.-]+",
    family="[A-Za-z0-9_.-]+",
    task="[A-Za-z0-9_-]+",
    experiment="[a-z-]+",


# One environment for every rule (the project's own), for users who run with --sdm conda.
CONDA_ENV = "../../environment.yml"

MODELS = ctxconfig.enabled_models(config)
DATASETS = ctxconfig.dataset_names(config)
DATASET_TASK = ctxconfig.dataset_task(config)
TASKS = list(config["tasks"])
SHOTS = sorted(config["shots"])
DATA_SOURCE = config["data"]["source"]


def model_spec(model):
    return config["models"][model]


def models_from(source):
    """Enabled models whose checkpoints come from the given source (hf: download, tiny: train, local, extend)."""
    return [m for m in MODELS if ctxconfig.model_source(config, m) == source]


def local_model_path(wildcards):
    return model_spec(wildcards.model)["path"]


def model_pattern(models):
    """A wildcard constraint matching exactly these model names (none: matches nothing)."""
    names = [re.escape(m) for m in models]
    return "|".join(names) if names else "(?!)"


def model_repo_id(wildcards):
    return model_spec(wildcards.model)["repo_id"]


def model_revision(wildcards):
    return model_spec(wildcards.model).get("revision", "main")


def tiny_tokenizer_dir(wildcards):
    return ancient(f"resources/tokenizers/{model_spec(wildcards.model)['family']}")


def tokenizer_dir(wildcards):
    """Prepared data is tokenizer-specific: tiny models share a built tokenizer, hf families use a checkpoint's."""
    family = wildcards.family
    members = [m for m in MODELS if model_spec(m)["family"] == family]
    if ctxconfig.model_source(config, members[0]) == "tiny":
        return ancient(f"resources/tokenizers/{family}")
    return ancient(f"resources/models/{members[0]}")


# Checkpoints are not ancient(): a retrained or re-downloaded checkpoint must rerun what uses it (extensions,
# model info, evaluations), or an edit to a model's training spec or revision would leave stale scores. An
# evaluation rerun over unchanged weights costs only cache lookups (its cache key is the weights' content).
def checkpoint_dir(wildcards):
    return f"resources/models/{wildcards.model}"


def base_checkpoint_dir(wildcards):
    return f"resources/models/{model_spec(wildcards.model)['extends']}"


def model_json(wildcards):
    """What model-info reads of a model: its entry, with the source that built it and, for an extension, which
    token count feeds C (extension.compute_tokens)."""
    model = wildcards.model
    spec = {**model_spec(model), "source": ctxconfig.model_source(config, model)}
    if spec["source"] == "extend":
        spec["compute_tokens"] = config["extension"]["compute_tokens"]
    return json.dumps(spec, sort_keys=True)


def tiny_train_spec(wildcards):
    return json.dumps(model_spec(wildcards.model)["tiny"], sort_keys=True)


def extension_spec(wildcards):
    """The recipe of one extension (models.<m>.extend, defaults filled, plus n_ctx and rope_scaling)."""
    spec = ctxconfig.extension_spec(config, wildcards.model)
    corpus = extension_corpus(wildcards.model)
    if corpus is not None:  # the token column of the corpus's parquet files
        spec["data_column"] = config["extension_data"][corpus]["column"]
    return json.dumps(spec, sort_keys=True)


def extension_corpus(model):
    """The extension_data corpus a model trains on, or None (synthetic data, generated in the job)."""
    source = ctxconfig.extension_spec(config, model)["data"]["source"]
    return None if source == "synthetic" else source


def extension_data_dir(wildcards):
    corpus = extension_corpus(wildcards.model)
    if corpus is None:
        return []
    local = config["extension_data"][corpus].get("path")
    return local if local else f"resources/extension-data/{corpus}"


def extension_data_option(wildcards, input):
    return f"--data-dir {input.data}" if input.get("data") else ""


def extension_corpora():
    corpora = {extension_corpus(m) for m in models_from("extend")} - {None}
    return sorted(c for c in corpora if not config["extension_data"][c].get("path"))


def extension_data_json(wildcards):
    return json.dumps(config["extension_data"][wildcards.corpus], sort_keys=True)


def extension_gpus(wildcards, input):
    """GPUs of one extend job (ctxscale.plan.extension.extension_gpus): the plan's, or a fixed extension.gpus
    checked against it (a job that cannot fit fails here, in one line, before any model loads); 0 on a CPU-only
    run. <TBD> until the base checkpoint's config.json exists: Snakemake asks again when the job is ready."""
    return extension_plan.extension_gpus(config, wildcards.model, input.base)


def extension_mem_mb(wildcards, attempt):
    """Host memory of one extend job: extension.mem_mb, or more when the plan's (offloaded fp32 state, the loading
    copy, the processes; ctxscale.plan.extension) needs it, times the attempt; <TBD> until the base checkpoint
    exists."""
    return extension_plan.extension_mem_mb(config, wildcards.model) * attempt


def extension_runtime(wildcards, attempt):
    return config["extension"]["runtime"] * attempt


def data_settings():
    keys = ("max_length_per_example", "max_eval_samples", "seed")
    return {k: config["data"][k] for k in keys}


def synthetic_spec(wildcards):
    spec = {**config["data"]["synthetic"][wildcards.dataset], "task": DATASET_TASK[wildcards.dataset]}
    spec.update(data_settings())
    return json.dumps(spec, sort_keys=True)


# evaluation.job_per: one evaluate job per (model, dataset), or per model over all its datasets
EVALUATION_PER_MODEL = config["evaluation"]["job_per"] == "model"


def evaluation_datasets(wildcards):
    """The datasets one evaluate job covers."""
    return DATASETS if EVALUATION_PER_MODEL else [wildcards.dataset]


def prepared_data_dir(wildcards, dataset):
    return f"resources/data/{model_spec(wildcards.model)['family']}/{dataset}"


def prepared_data_dirs(wildcards):
    return [prepared_data_dir(wildcards, d) for d in evaluation_datasets(wildcards)]


def prepared_data(wildcards):
    names = ("manifest.json", "shots.jsonl", "test.jsonl")
    return [f"{d}/{name}" for d in prepared_data_dirs(wildcards) for name in names]


def evaluation_out_dirs(wildcards):
    return [f"results/eval/{wildcards.model}/{d}" for d in evaluation_datasets(wildcards)]


def evaluation_settings(wildcards):
    return json.dumps(ctxconfig.evaluation_settings(config, wildcards.model), sort_keys=True)


def evaluation_threads():
    return config["evaluation"]["threads"]


def evaluation_gpu_memory_mib():
    # GPU-plan inputs are resources, not params: they size the job, so editing them reruns nothing.
    return round(config["evaluation"]["gpu_memory_gib"] * 1024)


def evaluation_gpu_overhead_mib():
    return round(config["evaluation"]["gpu_overhead_gib"] * 1024)


def evaluation_max_gpus_per_job():
    return config["evaluation"]["max_gpus_per_job"]


def evaluation_gpus(wildcards, input):
    """GPUs of one evaluate job: the config's number, or (auto) the job's plan from its inputs
    (ctxscale.plan.evaluation)."""
    requested = config["evaluation"]["gpus"]
    if requested != "auto":
        return requested
    model_dir, data_dirs = input.checkpoint, prepared_data_dirs(wildcards)
    needed = {model_dir: os.path.join(model_dir, "config.json")}
    needed.update((manifest, manifest) for manifest in (os.path.join(d, "manifest.json") for d in data_dirs))
    for path, needed_file in needed.items():
        if not os.path.exists(needed_file):
            # an input not made yet: Snakemake marks the resource <TBD> and asks again when the job is ready
            raise FileNotFoundError(2, "not yet created", str(path))
    # several datasets (job_per: model): the job runs on the largest of their plans
    return max(
        evaluation_plan.plan_from_files(
            model=wildcards.model, checkpoint_dir=model_dir, data_dir=data_dir, shots=SHOTS,
            settings=evaluation_plan.planning_settings(config),
        ).gpus
        for data_dir in data_dirs
    )  # fmt: skip


def evaluation_mem_mb(wildcards, attempt):
    return config["evaluation"]["mem_mb"] * attempt


def evaluation_runtime(wildcards, attempt):
    return config["evaluation"]["runtime"] * len(evaluation_datasets(wildcards)) * attempt


def shot_files(model, dataset):
    return [f"results/eval/{model}/{dataset}/shots_{k}.json" for k in SHOTS]


def all_eval_files(wildcards):
    return [f for m in MODELS for d in DATASETS for f in shot_files(m, d)]


def all_model_info(wildcards=None):
    return [f"results/models/{m}.json" for m in MODELS]


def experiments():
    """(experiment, task) pairs to fit: ctxscale.rule_arguments.workflow_experiments."""
    return rule_arguments.workflow_experiments(config)


def fit_files():
    return [f"results/fits/{e}/{t}.json" for e in experiments() for t in TASKS]


def fit_arguments(wildcards):
    """Command-line options of `ctxscale fit` for one experiment: ctxscale.rule_arguments.workflow_fit_arguments."""
    return " ".join(rule_arguments.workflow_fit_arguments(config, wildcards.experiment))


def figure_settings():
    # panels follow the config's task order (the tasks mapping), as the tables do
    return json.dumps({**config["figures"], "tasks": TASKS}, sort_keys=True)


def figure_names():
    """The figures of ctxscale.figures.FIGURES whose fits are all made, less those with no models to draw."""
    fitted = set(experiments())
    names = [n for n, spec in FIGURES.items() if set(spec.experiments) <= fitted]
    if not any(model_spec(m)["group"] == "pi" for m in MODELS):
        names = [n for n in names if n != "pi_vs_yarn"]
    if not any(ctxconfig.extension_spec(config, m)["validation"]["sequences"] for m in models_from("extend")):
        names = [n for n in names if n != "extension_validation"]
    return names


def caption_file(name):
    # absolute: report() resolves relative captions against whichever Snakefile calls this function
    return os.path.join(workflow.basedir, "workflow", "report", f"{name}.rst")


def figure_outputs():
    outputs = []
    for name in figure_names():
        for fmt in config["figures"]["formats"]:
            path = f"results/figures/{name}.{fmt}"
            if fmt == "png":
                path = report(path, caption=caption_file(name), category="Figures")
            outputs.append(path)
    return outputs


def table_outputs():
    outputs = []
    for name in rule_arguments.TABLE_NAMES:
        outputs.append(report(f"results/tables/{name}.csv", caption=caption_file(name), category="Tables"))
        outputs.append(f"results/tables/{name}.md")
    return outputs


def table_config():
    """What the tables read of the config: the models and where extended models' tokens come from (Table 1),
    and the task order."""
    keys = ("model_groups", "models", "tasks")
    extension = {"compute_tokens": config["extension"]["compute_tokens"]}
    return json.dumps({**{k: config[k] for k in keys}, "extension": extension}, sort_keys=True)


def compare_arguments(wildcards=None):
    """Options of `ctxscale compare` (experiments.compare): ctxscale.rule_arguments.workflow_compare_arguments."""
    return " ".join(rule_arguments.workflow_compare_arguments(config))


def compare_outputs():
    name = rule_arguments.COMPARISON_TABLE
    return [report(f"results/tables/{name}.csv", caption=caption_file(name), category="Tables"),
            f"results/tables/{name}.md"]


def final_outputs():
    compared = compare_outputs() if rule_arguments.compare_enabled(config) else []
    return ["results/observations/by_task.csv", *fit_files(), *figure_outputs(), *table_outputs(), *compared]
