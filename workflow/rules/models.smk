# Checkpoints: downloaded from the Hugging Face hub (source: hf), trained by the workflow (source: tiny),
# copied/converted from a folder or GGUF file on disk (source: local) or context-extended from another model
# (source: extend, or hf with extension.rebuild_from_base), then one model-info file each (N, D, C, n_ctx).


localrules:
    download_model,
    local_model,
    fetch_extension_data,
    model_info,


rule download_model:
    output:
        directory("resources/models/{model}"),
    params:
        repo_id=model_repo_id,
        revision=model_revision,
    log:
        "logs/download_model/{model}.log",
    retries: 3
    wildcard_constraints:
        model=model_pattern(models_from("hf")),
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.download --repo-id {params.repo_id} --revision {params.revision}"
        " --out {output} 2> {log}"


rule local_model:
    output:
        directory("resources/models/{model}"),
    params:
        path=local_model_path,
    log:
        "logs/local_model/{model}.log",
    wildcard_constraints:
        model=model_pattern(models_from("local")),
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.local_model --path {params.path:q} --out {output} 2> {log}"


rule tiny_tokenizer:
    output:
        directory("resources/tokenizers/{family}"),
    log:
        "logs/tiny_tokenizer/{family}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.tiny tokenizer --out {output} 2> {log}"


rule train_tiny_model:
    input:
        tokenizer=tiny_tokenizer_dir,
    output:
        directory("resources/models/{model}"),
    params:
        spec=tiny_train_spec,
    log:
        "logs/train_tiny_model/{model}.log",
    benchmark:
        "logs/benchmarks/train_tiny_model/{model}.tsv"
    # checkpoints gate every evaluation: train them before evaluating those already there
    priority: 10
    threads: 1
    wildcard_constraints:
        model=model_pattern(models_from("tiny")),
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.tiny train --tokenizer {input.tokenizer} --spec {params.spec:q}"
        " --threads {threads} --out {output} 2> {log}"


rule fetch_extension_data:
    output:
        directory("resources/extension-data/{corpus}"),
    params:
        spec=extension_data_json,
    log:
        "logs/fetch_extension_data/{corpus}.log",
    retries: 3
    wildcard_constraints:
        corpus="|".join(extension_corpora()) or "(?!)",
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.extension_data --spec {params.spec:q} --out {output} 2> {log}"


# Context extension (ctxscale.extend): continued training of the base checkpoint at the new length with the
# model's RoPE scaling, under torchrun with FSDP2 on the job's GPUs (--processes 0: one process on the CPU). Resumable: sharded
# checkpoints in resources/extend-state/{model} (every extend.checkpoint_every updates and on SIGUSR1/SIGTERM,
# which the SLURM profile sends before the time limit); a rerun continues from the last one.
rule extend_model:
    input:
        base=base_checkpoint_dir,
        data=extension_data_dir,
    output:
        directory("resources/models/{model}"),
    params:
        spec=extension_spec,
        data=extension_data_option,
    log:
        "logs/extend_model/{model}.log",
    benchmark:
        "logs/benchmarks/extend_model/{model}.tsv"
    # checkpoints gate every evaluation: train them before evaluating those already there
    priority: 10
    threads: config["extension"]["threads"]
    resources:
        gpu=extension_gpus,
        mem_mb=extension_mem_mb,
        runtime=extension_runtime,
    wildcard_constraints:
        model=model_pattern(models_from("extend")),
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.gpus --count {resources.gpu} --lock-dir resources/gpu-locks --"
        " python -m ctxscale.extend --base {input.base} --spec {params.spec:q} {params.data}"
        " --state-dir resources/extend-state/{wildcards.model} --processes {resources.gpu}"
        " --threads {threads} --out {output} 2> {log}"


rule model_info:
    input:
        checkpoint=checkpoint_dir,
    output:
        "results/models/{model}.json",
    params:
        spec=model_json,
    log:
        "logs/model_info/{model}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.model_info --model {wildcards.model} --spec {params.spec:q}"
        " --checkpoint {input.checkpoint} --out {output} 2> {log}"
