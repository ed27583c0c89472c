# The HTML report: `snakemake --report results/report.html` after a run collects every output flagged with
# report() (figures and tables, with captions from workflow/report/) under this front page.


report: "../report/workflow.rst"
