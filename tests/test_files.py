"""The one atomic writer: readable by the group and others under umask 022, used by every step's writer."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from ctxscale.files import atomic_write


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_modes_text_and_bytes(tmp_path, umask_022):
    assert atomic_write(tmp_path / "a" / "t.txt", "héllo\n").read_bytes() == "héllo\n".encode()
    assert atomic_write(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert mode(tmp_path / "a" / "t.txt") == mode(tmp_path / "b.bin") == 0o644
    os.umask(0o077)
    assert mode(atomic_write(tmp_path / "private", "x")) == 0o600  # the user's umask is respected
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temp file left behind


def test_every_writer_goes_through_it(tmp_path, umask_022):
    from ctxscale.aggregate import write_csv
    from ctxscale.datasets.prepared import write_prepared
    from ctxscale.evaluate.cache import ResultCache
    from ctxscale.fitting import write_json_atomic
    from ctxscale.tables import write_tables

    write_csv(pd.DataFrame({"a": [1.5]}), tmp_path / "obs.csv")
    manifest = {key: None for key in ("dataset", "task", "prefix", "suffix", "separator", "stop", "metric",
                                      "max_new_tokens", "counts", "seeds", "source", "tokenizer")}  # fmt: skip
    write_prepared(tmp_path / "data", [{"input": "q", "reference": "a"}], [{"id": "0", "input": "q", "reference": "a"}],
                   manifest)  # fmt: skip
    ResultCache(tmp_path / "cache").store("k" * 64, b"{}", b"")
    write_json_atomic(tmp_path / "fit.json", {"a": 1})
    write_tables({"t": pd.DataFrame({"x": [1]})}, tmp_path / "tables")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 9
    assert {p.name: mode(p) for p in files} == {p.name: 0o644 for p in files}
