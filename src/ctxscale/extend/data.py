"""Training and validation sequences of an extension, and which micro-batches each process takes.

A stream is indexed by sequence position ``p`` (0, 1, 2, ...): update ``u`` trains on positions
``u*G .. u*G+G-1`` (``G = global_batch``, whatever the process count). That global batch is cut into
micro-batches of ``micro_batch`` consecutive sequences; process ``r`` of ``P`` takes micro-batches
``r, r+P, r+2P, ...``, so ``N`` processes and one process see the same data in the same micro-batches.

- Corpus (``data.source`` a name under ``extension_data``): a folder of parquet files, one row a tokenized
  chunk. Rows are read row group by row group with pyarrow (memory-mapped, one group cached), never the whole
  corpus. The first ``validation.sequences`` rows of a seeded permutation of all rows are held out for
  validation; training visits the others in a seeded permutation per epoch (epoch ``e``: ``default_rng([seed, 1,
  e])``), so rows repeat only after a full pass. Every row is cut to ``min(n_ctx, row length)`` tokens.
- Synthetic (the miniature): the tiny models' training episodes (:func:`ctxscale.tiny.training_batch` one
  sequence at a time, which draws exactly what a batch draw would), ``n_ctx`` tokens each, from
  ``default_rng([seed, n_ctx])`` (the old ``tiny extend`` stream); validation draws from the separate stream
  ``default_rng([seed, n_ctx, 1])`` so the training data is the same with or without validation.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from ctxscale.errors import UserError

IGNORE_INDEX = -100  # the label of padding positions (transformers' and torch's cross-entropy default)


class ParquetCorpus:
    """Rows of a folder of parquet files by global row index, read one row group at a time."""

    def __init__(self, folder, column: str):
        self.folder = Path(folder)
        self.files = sorted(self.folder.rglob("*.parquet"))
        if not self.files:
            raise UserError(f"--data-dir {folder} holds no .parquet files")
        self.column = column
        self.groups = []  # (file, row group, first global row, rows)
        start = 0
        for path in self.files:
            parquet = pq.ParquetFile(path)
            metadata, names = parquet.metadata, parquet.schema_arrow.names
            if column not in names:
                raise UserError(f"{path} has no column {column!r} (columns: {', '.join(names)})")
            for group in range(metadata.num_row_groups):
                rows = metadata.row_group(group).num_rows
                self.groups.append((path, group, start, rows))
                start += rows
        self.rows = start
        self._starts = np.array([g[2] for g in self.groups], dtype=np.int64)

    @functools.lru_cache(maxsize=2)
    def _group(self, index: int):
        path, group, _, _ = self.groups[index]
        return pq.ParquetFile(path, memory_map=True).read_row_group(group, columns=[self.column]).column(0)

    def row(self, index: int, max_tokens: int) -> torch.Tensor:
        """Row ``index`` (over all files) cut to ``max_tokens`` tokens, as int64."""
        group = int(np.searchsorted(self._starts, index, side="right")) - 1
        values = self._group(group)[index - self.groups[group][2]].values
        ids = np.asarray(values.slice(0, min(max_tokens, len(values))).to_numpy(zero_copy_only=False))
        return torch.from_numpy(ids.astype(np.int64))


class CorpusStream:
    """Training sequences of a corpus: position ``p`` -> a held-in row, in a seeded permutation per epoch."""

    def __init__(self, corpus: ParquetCorpus, seed: int, n_ctx: int, held_out: int):
        if corpus.rows <= held_out:
            raise UserError(f"the corpus has {corpus.rows} rows, not more than the {held_out} validation sequences")
        self.corpus, self.seed, self.n_ctx = corpus, seed, n_ctx
        order = np.random.default_rng([seed, 0]).permutation(corpus.rows)
        self.validation_rows, self.training_rows = order[:held_out], np.sort(order[held_out:])

    @functools.lru_cache(maxsize=2)
    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1, epoch]).permutation(self.training_rows)

    def sequence(self, position: int) -> torch.Tensor:
        epoch, offset = divmod(position, len(self.training_rows))
        return self.corpus.row(int(self._epoch_order(epoch)[offset]), self.n_ctx)

    def validation(self) -> list[torch.Tensor]:
        return [self.corpus.row(int(i), self.n_ctx) for i in self.validation_rows]

    # The position is the whole state: nothing to save beyond the update counter.
    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


class SyntheticStream:
    """The miniature's training episodes, drawn in order from one NumPy generator (its state is saved)."""

    def __init__(self, tokenizer, mix: dict, seed: int, n_ctx: int, held_out: int):
        self.tokenizer, self.mix, self.n_ctx, self.seed, self.held_out = tokenizer, mix, n_ctx, seed, held_out
        self.rng = np.random.default_rng([seed, n_ctx])  # the old `tiny extend` stream
        self.next_position = 0

    def _draw(self, rng) -> torch.Tensor:
        from ctxscale.tiny import training_batch  # the episodes' one definition

        return training_batch(self.tokenizer, rng, self.mix, 1, self.n_ctx)[0]

    def sequence(self, position: int) -> torch.Tensor:
        if position != self.next_position:
            raise RuntimeError(f"synthetic sequences are drawn in order: asked for {position}, "
                               f"next is {self.next_position}")
        self.next_position += 1
        return self._draw(self.rng)

    def validation(self) -> list[torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.n_ctx, 1])
        return [self._draw(rng) for _ in range(self.held_out)]

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "next_position": self.next_position}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.next_position = state["next_position"]


def my_micro_batches(stream, update: int, global_batch: int, micro_batch: int, rank: int, processes: int):
    """This process's micro-batches of update ``update``, as ``(input_ids, labels)`` pairs.

    Every process draws the whole global batch (cheap: a corpus row is read only when it is this process's,
    but a synthetic stream must be drawn in order) and keeps micro-batches ``rank, rank + processes, ...``.
    Sequences shorter than the longest of their micro-batch are right-padded with token 0 and label
    ``IGNORE_INDEX``; with causal attention, padding at the end changes nothing before it.
    """
    first = update * global_batch
    count = global_batch // micro_batch
    synthetic = isinstance(stream, SyntheticStream)
    mine = []
    for index in range(count):
        positions = range(first + index * micro_batch, first + (index + 1) * micro_batch)
        if index % processes != rank:
            if synthetic:
                for position in positions:
                    stream.sequence(position)
            continue
        mine.append(collate([stream.sequence(p) for p in positions]))
    return mine


def collate(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest; labels = the ids, ``IGNORE_INDEX`` at padding."""
    length = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), length, dtype=torch.long)
    labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
    for i, sequence in enumerate(sequences):
        ids[i, : len(sequence)] = sequence
        labels[i, : len(sequence)] = sequence
    return ids, labels
