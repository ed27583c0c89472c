"""Evaluate one model on one or more prepared datasets at every shot count, through lm-eval, never truncating:
``python -m ctxscale.evaluate``.

One process per (model, dataset), or per model over all its datasets (the config's ``evaluation.job_per``):
the model is loaded once, in the engine the ``backend`` setting names, sized by the plan for the longest prompt
over the job's datasets, and every shot count runs through its own ``lm_eval.simple_evaluate`` over the task
that :mod:`ctxscale.lm_eval_tasks` generates from the prepared data (first-n nested shots, greedy ``generate_until``,
the official prompts byte for byte). The files, one concern each:

- :mod:`.settings`: the ``--settings`` (the config's ``evaluation`` subtree plus the model's ``revision``,
  ``n_ctx`` and ``rope_scaling``), their defaults and checks.
- :mod:`.engine`: what the evaluation needs of an engine (:class:`~.engine.Engine`); :mod:`.hf_engine`
  (lm-eval's HFLM) and :mod:`.vllm_engine` (lm-eval's VLLM, with the RoPE plan for prompts past the model's
  limit); :mod:`.engines`: the engines by name, loading one, one engine shared by a job's datasets.
- :mod:`.vllm_rope`: the vLLM plugin that lengthens YaRN's RoPE table (entry point ``vllm.general_plugins``).
- :mod:`.fingerprint`: checkpoint, data and code fingerprints and the cache key.
- :mod:`.cache`: the result files and the cache of finished shot counts.
- :mod:`.runner`: :func:`evaluate`: the truncation guard, the lm-eval call of each shot count, its record.
- :mod:`.cli` (and ``__main__``): the command line.

Nothing is imported here: vLLM imports :mod:`.vllm_rope` in every engine process, which should not load the rest.
"""
