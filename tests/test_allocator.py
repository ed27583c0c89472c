"""ctxscale.allocator: freed buffers stay in the process, so reallocating them faults no pages in again."""

import os
import platform
import subprocess
import sys

import pytest

from ctxscale.allocator import keep_freed_memory

# Allocate and free a 64 MiB buffer 20 times, touching every page; print the minor page faults it took.
FAULTS = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from ctxscale.allocator import keep_freed_memory
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    buffer = np.ones(16 * 1024 * 1024, dtype=np.float32)
    del buffer
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def _page_faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, env=env, check=True)
    return int(done.stdout.strip())


@glibc_only
def test_kept_memory_is_reused_without_page_faults():
    default, kept = _page_faults("default"), _page_faults("keep")
    # by default every buffer is a fresh mmap whose pages fault in again (10,880 faults here with transparent
    # huge pages, 2026-12-05); kept, only the first buffer's pages do (495)
    assert kept * 5 < default


@glibc_only
def test_a_users_malloc_settings_are_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
