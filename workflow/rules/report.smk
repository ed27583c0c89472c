# Snakemake report: figures and tables with captions (filled in with the figures stage).
