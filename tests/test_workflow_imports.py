"""What the workflow imports at every parse (locally once per run, once per job under SLURM) loads no heavy
library: the ctxscale modules named by workflow/rules/common.smk's top-level imports, imported in a fresh process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

COMMON = Path(__file__).resolve().parents[1] / "workflow" / "rules" / "common.smk"
HEAVY = ("matplotlib", "seaborn", "scipy", "pandas", "torch", "transformers", "lm_eval", "vllm")


def test_the_workflow_parse_imports_no_plotting_numerical_or_model_library():
    imports = [line for line in COMMON.read_text().splitlines()
               if re.match(r"(from ctxscale\S* import |import ctxscale)", line)]
    assert len(imports) >= 4, imports  # config, rule arguments, figure registry, plans
    probe = "\n".join(imports + [f"import sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"])
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
