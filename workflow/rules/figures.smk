# Figures and tables of the paper, from the observations and the fits.


rule figures:
    input:
        observations="results/observations/by_task.csv",
        fits=fit_files(),
        models=all_model_info(),
    output:
        touch("results/figures/.done"),
    params:
        settings=figure_settings(),
    log:
        "logs/figures/figures.log",
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.figures --observations {input.observations} --fits-dir results/fits"
        " --model-info {input.models} --settings {params.settings:q} --out-dir results/figures 2> {log}"


rule tables:
    input:
        fits=fit_files(),
        models=all_model_info(),
    output:
        touch("results/tables/.done"),
    log:
        "logs/tables/tables.log",
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.tables --fits-dir results/fits --model-info {input.models}"
        " --out-dir results/tables 2> {log}"
