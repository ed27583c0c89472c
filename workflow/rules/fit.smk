# One fit per (experiment, task): in-distribution, held-out context, held-out compute, leave-one-model-out,
# and the no-penalty and context-agnostic baselines.


rule fit:
    input:
        "results/observations/observations.csv",
    output:
        "results/fits/{experiment}/{task}.json",
    params:
        arguments=fit_arguments,
    log:
        "logs/fit/{experiment}/{task}.log",
    benchmark:
        "logs/benchmarks/fit/{experiment}/{task}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.experiments {input} --task {wildcards.task} {params.arguments} --out {output} 2> {log}"


# Every law variant of ctxscale.law, compared out of sample on the same cells (experiments.compare).
rule compare:
    input:
        "results/observations/observations.csv",
    output:
        compare_outputs(),
    params:
        arguments=compare_arguments(),
    log:
        "logs/compare/compare.log",
    benchmark:
        "logs/benchmarks/compare/compare.tsv"
    # the longest job after the evaluations: started first, the fits fill the other cores around it
    priority: 5
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.compare {input} {params.arguments} --out-dir results/tables -q 2> {log}"
