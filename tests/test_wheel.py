"""`ctxscale` installed the ordinary way (a wheel, not `pip install -e`) runs without the checkout.

A wheel of the checkout goes, without its dependencies, into a fresh virtual environment that sees this
environment's site-packages for them (a plain path in a ``.pth`` file: the editable install's own ``.pth``
there is not processed, so the only ``ctxscale`` it can import is the wheel's). From a folder outside the
checkout, that environment's ``ctxscale`` converts a fixture of ``tests/data/``, fits and predicts.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RULER = REPO / "tests" / "data" / "external" / "ruler_readme.csv"


def _run(argv, cwd, env, timeout=300):
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{argv} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, ctxscale script, environment, working folder) of a fresh venv with the wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_INDEX"] = "1"  # offline: the build uses this environment's setuptools, the install --no-deps
    # Build from a copy of what the wheel is made of, so the build leaves nothing (build/, egg-info) in the checkout.
    source = root / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = root / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, source],
         root, env)
    (wheel,) = wheels.glob("context_scaling-*.whl")

    target = root / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], root, env)
    site_packages = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              root, env).stdout.strip())
    # The dependencies: this environment's site-packages, after the new one (written after the install, so
    # that pip never sees this environment's editable context-scaling as one to replace).
    (site_packages / "_ctxscale_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    work = root / "elsewhere"
    work.mkdir()
    return python, target / "bin" / "ctxscale", env, work, site_packages


def test_the_wheel_ships_the_schema_and_imports_from_site_packages(installed):
    python, _, env, work, site_packages = installed
    assert REPO not in work.parents
    probe = ("import json, ctxscale, ctxscale.config as c, ctxscale.experiments as e; "
             "print(json.dumps([ctxscale.__file__, c.load_schema()['$schema'], e.DEFAULT_TRAIN_MAX_N_PMT]))")
    location, schema, default = json.loads(_run([python, "-c", probe], work, env).stdout)
    assert Path(location).resolve().is_relative_to(site_packages.resolve() / "ctxscale")
    assert (site_packages / "ctxscale" / "schemas" / "config.schema.yaml").is_file()
    assert schema == "https://json-schema.org/draft/2020-12/schema" and default == 10000
    # the shipped Llama-2 configs (ctxscale plan --cost before any download) are package data too
    probe = "from ctxscale.plan.architecture import shipped_config; print(shipped_config('llama2-13b')['hidden_size'])"
    assert _run([python, "-c", probe], work, env).stdout.strip() == "5120"
    assert (site_packages / "ctxscale" / "model_configs" / "README.md").is_file()


def test_installed_ctxscale_fits_and_predicts_outside_the_checkout(installed):
    _, script, env, work, _ = installed
    result = _run([script, "external", "ruler", RULER, "--out", "obs.csv"], work, env)
    assert result.stdout.startswith("wrote obs.csv: 216 cells (41 models, 6 datasets, tasks ruler")
    _run([script, "fit", "obs.csv", "--task", "ruler", "--per-dataset", "--seeds", "1", "--out", "fit.json", "-q"],
         work, env)
    fit = json.loads((work / "fit.json").read_text())
    assert fit["task"] == "ruler" and fit["experiment"] == "in-distribution" and fit["law"]["name"] == "paper"
    assert set(fit["identifiable_params"]) == {"log10_C50", "alpha", "log10_n50", "beta"}
    assert fit["metrics"]["train"]["n"] == 216 and 0 < fit["metrics"]["train"]["mae"] < 0.1
    # Jamba-1.5-large (C = 5.64e23, claimed 256K): well inside its context, and past it
    result = _run([script, "predict", "fit.json", "--compute", "5.64e23", "--n-pmt", "4096", "300000",
                   "--n-ctx", "262144"], work, env)
    header, inside, beyond = result.stdout.splitlines()
    assert header == "compute\tn_pmt\tn_ctx\tpredicted"
    inside, beyond = float(inside.split("\t")[3]), float(beyond.split("\t")[3])
    assert 0.5 < inside <= 1 and 0 <= beyond < 0.05
