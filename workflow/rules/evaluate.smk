# The GPU stage: one job per (model, dataset) loads the model once and evaluates every shot count.
# Its GPUs, max_model_len and tensor parallelism come from the job's plan (ctxscale.plan, `ctxscale plan`);
# on one machine, ctxscale.gpus gives each running job its own devices.
# Finished shot counts are cached outside the outputs (resources/eval-cache), so a killed job resumes.


rule evaluate:
    input:
        unpack(prepared_data),
        checkpoint=checkpoint_dir,
    output:
        protected(
            expand("results/eval/{{model}}/{{dataset}}/shots_{shots}.json", shots=SHOTS)
        ),
    params:
        settings=evaluation_settings,
        shots=" ".join(str(k) for k in SHOTS),
        data_dir=prepared_data_dir,
    log:
        "logs/evaluate/{model}/{dataset}.log",
    benchmark:
        "benchmarks/evaluate/{model}/{dataset}.tsv"
    threads: evaluation_threads()
    resources:
        gpu=evaluation_gpus,
        mem_mb=evaluation_mem_mb,
        runtime=evaluation_runtime,
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.gpus --count {resources.gpu} --lock-dir resources/gpu-locks --"
        " python -m ctxscale.evaluate --model-dir {input.checkpoint} --model-name {wildcards.model}"
        " --data-dir {params.data_dir} --shots {params.shots} --out-dir results/eval/{wildcards.model}/{wildcards.dataset}"
        " --cache-dir resources/eval-cache --settings {params.settings:q} --plan {EVALUATION_PLAN:q} 2> {log}"
