# The paper's figures and tables, from the observations and the fits. Every output is flagged for the
# Snakemake HTML report with a caption from workflow/report/.


rule figures:
    input:
        observations="results/observations/by_task.csv",
        fits=fit_files(),
        models=all_model_info(),
    output:
        figure_outputs(),
    params:
        settings=figure_settings(),
        only=" ".join(f"--only {name}" for name in figure_names()),
    log:
        "logs/figures/figures.log",
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.figures --observations {input.observations} --fits-dir results/fits"
        " --model-info {input.models} --settings {params.settings:q} {params.only}"
        " --out-dir results/figures 2> {log}"


rule tables:
    input:
        fits=fit_files(),
        models=all_model_info(),
    output:
        table_outputs(),
    params:
        config=table_config(),
    log:
        "logs/tables/tables.log",
    conda:
        CONDA_ENV
    shell:
        "python -m ctxscale.tables write --config-json {params.config:q} --fits-dir results/fits"
        " --model-info {input.models} --out-dir results/tables 2> {log}"
