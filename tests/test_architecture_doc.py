"""docs/architecture.md stays the map of the code: it names every library module and every workflow rule."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "architecture.md").read_text()


def _modules() -> list[str]:
    package = REPO / "src" / "ctxscale"
    files = [p.stem for p in package.glob("*.py") if p.stem != "__init__"]
    packages = [p.name for p in package.iterdir() if (p / "__init__.py").is_file()]
    return sorted(files + packages)


def _rules() -> list[str]:
    sources = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    return sorted({m for path in sources for m in re.findall(r"^rule (\w+):", path.read_text(), re.MULTILINE)})


def test_every_module_is_in_the_architecture_doc():
    missing = [m for m in _modules() if f"`{m}`" not in DOC]
    assert not missing, f"docs/architecture.md does not list these modules of src/ctxscale: {missing}"


def test_every_rule_is_in_the_architecture_doc():
    rules = _rules()
    assert {"evaluate", "extend_model", "fit", "all"} <= set(rules)  # the scan finds the rules
    missing = [r for r in rules if f"`{r}`" not in DOC]
    assert not missing, f"docs/architecture.md does not list these workflow rules: {missing}"
