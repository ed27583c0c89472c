"""One GPU set per concurrent local job: ctxscale.gpus under real Snakemake scheduling, on a fake device list."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ctxscale import gpus

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def test_device_list_sources(monkeypatch):
    assert gpus.available_devices({"CTXSCALE_GPU_DEVICES": "2, 3", "CUDA_VISIBLE_DEVICES": "0"}) == ["2", "3"]
    assert gpus.available_devices({"CUDA_VISIBLE_DEVICES": "0,1"}) == ["0", "1"]
    monkeypatch.setattr(gpus.shutil, "which", lambda name: None)
    assert gpus.available_devices({}) == []


def test_reserve_takes_free_devices_and_releases_on_close(tmp_path):
    first, fds = gpus.reserve(2, tmp_path, ["0", "1", "2"])
    assert first == ["0", "1"]
    second, more = gpus.reserve(1, tmp_path, ["0", "1", "2"])
    assert second == ["2"]
    for fd in fds:
        os.close(fd)
    third, _ = gpus.reserve(2, tmp_path, ["0", "1", "2"])
    assert third == ["0", "1"]


def test_more_gpus_than_the_machine_has_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ctxscale.gpus", "--count", "3", "--lock-dir", str(tmp_path), "--", "true"],
        capture_output=True, text=True, env={**os.environ, "CTXSCALE_GPU_DEVICES": "0,1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: the job needs 3 GPU(s) but this machine has 2 (0,1); set CTXSCALE_GPU_DEVICES or "
        "CUDA_VISIBLE_DEVICES, or run on a machine with more GPUs"
    ]


def test_a_machine_without_gpus_runs_the_command_unreserved(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CTXSCALE_GPU_DEVICES", "CUDA_VISIBLE_DEVICES")}
    env["PATH"] = str(tmp_path)  # no nvidia-smi on PATH
    result = subprocess.run(
        [sys.executable, "-m", "ctxscale.gpus", "--count", "1", "--lock-dir", str(tmp_path / "locks"), "--",
         sys.executable, "-c", "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "unset"
    assert "requested but this machine has none" in result.stderr


def test_slurm_and_zero_gpus_leave_the_devices_alone(tmp_path):
    env = {**os.environ, "CTXSCALE_GPU_DEVICES": "0,1", "CUDA_VISIBLE_DEVICES": "7"}
    show = [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"]
    for count, extra, expected in (("0", {}, "7"), ("1", {"SLURM_JOB_ID": "42"}, "7"), ("1", {}, "0")):
        result = subprocess.run(
            [sys.executable, "-m", "ctxscale.gpus", "--count", count, "--lock-dir", str(tmp_path), "--", *show],
            capture_output=True, text=True, env={**env, **extra}, check=True,
        )  # fmt: skip
        assert result.stdout.strip() == expected


@pytest.mark.parametrize("per_job, limit", [(1, 2), (2, 4)])
def test_concurrent_snakemake_jobs_never_share_a_gpu(tmp_path, per_job, limit):
    """Six jobs under --resources gpu=LIMIT: overlapping jobs see disjoint CUDA_VISIBLE_DEVICES."""
    (tmp_path / "Snakefile").write_text(textwrap.dedent(f"""
        rule all:
            input: expand("out/{{i}}.txt", i=range(6))

        rule job:
            output: "out/{{i}}.txt"
            resources: gpu={per_job}
            shell:
                "{sys.executable} -m ctxscale.gpus --count {{resources.gpu}} --lock-dir locks --"
                " {sys.executable} -c 'import os, time; a = time.time(); time.sleep(1.5);"
                " open(\\"{{output}}\\", \\"w\\").write(\\" \\".join([os.environ[\\"CUDA_VISIBLE_DEVICES\\"], str(a), str(time.time())]))'"
    """))
    result = subprocess.run(
        [*SNAKEMAKE, "--cores", "6", "--resources", f"gpu={limit}", "--workflow-profile", "none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CTXSCALE_GPU_DEVICES": ",".join(str(d) for d in range(limit))},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = []
    for path in sorted((tmp_path / "out").iterdir()):
        devices, start, end = path.read_text().split()
        runs.append((set(devices.split(",")), float(start), float(end)))
    assert all(len(devices) == per_job for devices, _, _ in runs)
    overlapping = 0
    for i, (devices_a, start_a, end_a) in enumerate(runs):
        for devices_b, start_b, end_b in runs[i + 1 :]:
            if start_a < end_b and start_b < end_a:  # ran at the same time
                overlapping += 1
                assert not devices_a & devices_b
    assert overlapping > 0  # the limit let jobs run concurrently, so the check above was exercised
