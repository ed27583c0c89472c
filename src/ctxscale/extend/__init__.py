"""Context extension of a Llama checkpoint (paper-spec §3.3): ``python -m ctxscale.extend``.

One implementation for the miniature's tiny models and for Llama-2-7B/13B. The files, one concern each:

- :mod:`.recipe`: the spec (``$defs/extend_spec`` plus the workflow's ``n_ctx`` and ``rope_scaling``), its
  checks, and the learning-rate schedules (``as-run``, ``intended``, ``cosine``).
- :mod:`.data`: the training and validation sequence streams (a parquet corpus or the synthetic episodes) and
  which micro-batches each process takes.
- :mod:`.model`: building the extended model (RoPE scaling set before construction, fp32 RoPE buffers
  asserted), the chunked loss, FSDP2 sharding.
- :mod:`.state`: resumable sharded checkpoints (torch distributed checkpoint) and the stop-on-signal flag.
- :mod:`.validation`: validation loss by position bucket.
- :mod:`.train`: the training loop and the output checkpoint.
- :mod:`.__main__`: the command line and the re-launch under ``torch.distributed.run``.
"""
