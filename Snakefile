# context-scaling: reproduction of "Predicting Task Performance with Context-aware Scaling Laws"
# (Montgomery et al., 2025). Default config: the CPU miniature. The paper: --configfile config/config.yaml.
from snakemake.utils import min_version

min_version("9.18")


# The miniature is the default only when no --configfile is given: Snakemake would otherwise merge a
# command-line config over this one (the paper would inherit the tiny models). Several --configfile files
# given on purpose are merged in order, the later ones winning.
if not workflow.overwrite_configfiles:

    configfile: "config/demo.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/fit.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
