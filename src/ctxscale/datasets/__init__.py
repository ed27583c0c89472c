"""The evaluation datasets, one concern a module:

- :mod:`~ctxscale.datasets.registry`: the paper's 17 datasets (:data:`DATASETS`, ``get_spec``), their official
  constructors, prompt pieces and metrics;
- :mod:`~ctxscale.datasets.prepared`: the prepared-data format (``shots.jsonl``, ``test.jsonl``,
  ``manifest.json``), its type ``PreparedData``, ``write_prepared``/``read_prepared``, the n-shot prompt and the
  shot orders;
- :mod:`~ctxscale.datasets.tokenizer`: the tokenizer loader and token counts (length filter, prompt bounds);
- :mod:`~ctxscale.datasets.hub`: loading the splits from the Hugging Face Hub;
- :mod:`~ctxscale.datasets.prepare`: preparing one paper dataset (filter, shot pool, fixed test subset);
- :mod:`~ctxscale.datasets.synthetic` (with :mod:`~ctxscale.datasets.synthetic_kinds`): the miniature's
  generated datasets, ``python -m ctxscale.datasets.synthetic``;
- :mod:`~ctxscale.datasets.__main__`: ``python -m ctxscale.datasets prepare|list``.

Nothing is re-exported here: import from the module that holds a name, so that importing one (the configuration
reads the registry) loads neither the others nor their dependencies.
"""
