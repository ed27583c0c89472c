# Per-shot result files -> the observations tables (per dataset and per task), with N, D, C, n_ctx per model.


localrules:
    aggregate,


rule aggregate:
    input:
        evals=all_eval_files,
        models=all_model_info,
    output:
        datasets="results/observations/observations.csv",
        tasks="results/observations/by_task.csv",
    log:
        "logs/aggregate/aggregate.log",
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.aggregate --eval-files {input.evals} --model-info {input.models}"
        " --out-datasets {output.datasets} --out-tasks {output.tasks} 2> {log}"
