"""The CPU code-path pin (ctxscale.numerics): set before the first tensor operation, user values kept."""

import os
import subprocess
import sys

import pytest

from ctxscale import numerics


def test_pin_sets_the_avx2_paths_and_keeps_a_users_value(monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    assert numerics.pin_cpu_code_paths(has_avx2=True) == {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "default"}
    assert os.environ["MKL_CBWR"] == "AVX2"


def test_pin_leaves_a_cpu_without_avx2_alone(monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert numerics.pin_cpu_code_paths(has_avx2=False) == {}
    assert "MKL_CBWR" not in os.environ


def test_cpu_flags_are_read_from_cpuinfo(tmp_path, monkeypatch):
    monkeypatch.setattr(numerics.platform, "machine", lambda: "x86_64")
    with_avx2, without = tmp_path / "a", tmp_path / "b"
    with_avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx512vl\n")
    assert numerics.cpu_has_avx2(with_avx2) and not numerics.cpu_has_avx2(without)
    assert not numerics.cpu_has_avx2(tmp_path / "missing")


@pytest.mark.skipif(not numerics.cpu_has_avx2(), reason="needs an x86-64 CPU with AVX2")
def test_tiny_training_pins_before_its_first_tensor_operation():
    # The pinned value is swapped for "default" (which no AVX2 machine picks by itself): PyTorch reporting it
    # proves the pin ran before PyTorch fixed its code path, after torch and transformers were imported.
    env = {k: v for k, v in os.environ.items() if k not in numerics.AVX2_CODE_PATHS}
    code = ("import ctxscale.numerics as n; n.AVX2_CODE_PATHS['ATEN_CPU_CAPABILITY'] = 'default'\n"
            "import torch, ctxscale.tiny as tiny\n"
            "tiny._set_determinism(1); torch.ones(4).sum()\n"
            "print(torch.backends.cpu.get_cpu_capability())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "DEFAULT"
