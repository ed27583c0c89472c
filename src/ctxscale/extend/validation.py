"""Validation loss by position bucket: how well the model predicts tokens at 0-B, B-2B, ... up to n_ctx.

Held-out sequences (never trained on, see :mod:`.data`) are scored before and after the extension. Process
``r`` of ``P`` scores sequences ``r, r+P, ...``; in the last round a process without a sequence of its own
scores the first one again and discards it, because every process must take part in each sharded forward pass.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ctxscale.extend.data import IGNORE_INDEX, collate


def bucket_edges(n_ctx: int, bucket_tokens: int) -> list[list[int]]:
    """``[[0, B], [B, 2B], ..., [kB, n_ctx]]`` (the last bucket may be shorter)."""
    return [[start, min(start + bucket_tokens, n_ctx)] for start in range(0, n_ctx, bucket_tokens)]


@torch.no_grad()
def bucket_losses(wrapper, sequences: list[torch.Tensor], n_ctx: int, bucket_tokens: int, device,
                  rank: int = 0, processes: int = 1) -> list[float | None]:
    """Mean next-token loss of the predictions made at each position bucket (None: no token there).

    The loss at position ``t`` is that of predicting token ``t+1`` from tokens ``0..t``.
    """
    edges = bucket_edges(n_ctx, bucket_tokens)
    sums = torch.zeros(len(edges), dtype=torch.float64)
    counts = torch.zeros(len(edges), dtype=torch.float64)
    was_training = wrapper.training
    wrapper.eval()
    rounds = math.ceil(len(sequences) / processes)
    for round_index in range(rounds):
        index = round_index * processes + rank
        keep = index < len(sequences)
        ids, labels = collate([sequences[index if keep else 0]])
        losses = wrapper(ids.to(device), labels.to(device), reduction="none").double().cpu()[0]
        scored = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[0, 1:] != IGNORE_INDEX
        if not keep:
            continue
        for bucket, (start, end) in enumerate(edges):
            sums[bucket] += losses[start:end][scored[start:end]].sum()
            counts[bucket] += scored[start:end].sum()
    if processes > 1:
        totals = torch.stack([sums, counts]).to(device)
        dist.all_reduce(totals)
        sums, counts = totals.cpu()
    wrapper.train(was_training)
    return [round(float(s / c), 6) if c > 0 else None for s, c in zip(sums.tolist(), counts.tolist())]
