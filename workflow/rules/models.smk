# Checkpoints: downloaded from the Hugging Face hub (source: hf), trained by the workflow (source: tiny) or
# copied/converted from a folder or GGUF file on disk (source: local), then one model-info file each (N, D, C, n_ctx).


localrules:
    download_model,
    local_model,
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
        model=model_pattern(hf_models()),
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
        model=model_pattern(local_models()),
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
        model=model_pattern(m for m in tiny_models() if "extends" not in model_spec(m)),
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.tiny train --tokenizer {input.tokenizer} --spec {params.spec:q}"
        " --threads {threads} --out {output} 2> {log}"


rule extend_tiny_model:
    input:
        base=base_checkpoint_dir,
    output:
        directory("resources/models/{model}"),
    params:
        spec=tiny_extend_spec,
    log:
        "logs/extend_tiny_model/{model}.log",
    benchmark:
        "logs/benchmarks/extend_tiny_model/{model}.tsv"
    # checkpoints gate every evaluation: train them before evaluating those already there
    priority: 10
    threads: 1
    wildcard_constraints:
        model=model_pattern(m for m in tiny_models() if "extends" in model_spec(m)),
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.tiny extend --base {input.base} --spec {params.spec:q}"
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
        "python -m ctxscale.compute model-info --model {wildcards.model} --spec {params.spec:q}"
        " --checkpoint {input.checkpoint} --out {output} 2> {log}"
