# The GPU stage: one job per (model, dataset) loads the model once and evaluates every shot count; with
# evaluation.job_per: model, one job per model does so for all its datasets (one model load, not one per dataset).
# Its GPUs, max_model_len and tensor parallelism come from the job's plan (ctxscale.plan, `ctxscale plan`);
# on one machine, ctxscale.gpus gives each running job its own devices.
# Finished shot counts are cached outside the outputs (resources/eval-cache), so a killed job resumes.


rule evaluate:
    input:
        prepared_data,
        checkpoint=checkpoint_dir,
    # per model, not protected: adding or editing a dataset reruns the model's job, which copies the other
    # datasets' shot counts from resources/eval-cache instead of evaluating them again
    output:
        expand("results/eval/{{model}}/{dataset}/shots_{shots}.json", dataset=DATASETS, shots=SHOTS)
        if EVALUATION_PER_MODEL
        else protected(expand("results/eval/{{model}}/{{dataset}}/shots_{shots}.json", shots=SHOTS)),
    params:
        settings=evaluation_settings,
        shots=" ".join(str(k) for k in SHOTS),
        data_dirs=lambda wildcards: " ".join(prepared_data_dirs(wildcards)),
        out_dirs=lambda wildcards: " ".join(evaluation_out_dirs(wildcards)),
    log:
        "logs/evaluate/{model}.log" if EVALUATION_PER_MODEL else "logs/evaluate/{model}/{dataset}.log",
    benchmark:
        "logs/benchmarks/evaluate/{model}.tsv"
        if EVALUATION_PER_MODEL
        else "logs/benchmarks/evaluate/{model}/{dataset}.tsv"
    threads: evaluation_threads()
    resources:
        gpu=evaluation_gpus,
        mem_mb=evaluation_mem_mb,
        runtime=evaluation_runtime,
        gpu_memory_mib=evaluation_gpu_memory_mib(),
        gpu_overhead_mib=evaluation_gpu_overhead_mib(),
        max_gpus_per_job=evaluation_max_gpus_per_job(),
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.gpus --count {resources.gpu} --lock-dir resources/gpu-locks --"
        " python -m ctxscale.evaluate --model-dir {input.checkpoint} --model-name {wildcards.model}"
        " --data-dir {params.data_dirs} --shots {params.shots} --out-dir {params.out_dirs}"
        " --cache-dir resources/eval-cache --settings {params.settings:q} --plan --gpu-memory-mib {resources.gpu_memory_mib}"
        " --gpu-overhead-mib {resources.gpu_overhead_mib} --max-gpus-per-job {resources.max_gpus_per_job} 2> {log}"
