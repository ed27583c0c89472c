"""The prepared-data format: writing, reading and the reader's checks of what the evaluation relies on."""

from __future__ import annotations

import pytest

from ctxscale.datasets.prepared import MANIFEST_KEYS, read_prepared, write_prepared
from ctxscale.errors import UserError



# A manifest that passes read_prepared's checks (string prompt parts, stop strings, a known metric, ...).
MANIFEST = {"dataset": "synthetic", "task": "arithmetic", "prefix": "Q: ", "suffix": "\nA: ", "separator": "\n\n",
            "stop": ["\n\n", "Q: "], "metric": "math_equiv", "max_new_tokens": 4, "counts": {}, "seeds": {},
            "source": {}, "tokenizer": None}  # fmt: skip
TEST_ROWS = [{"id": "0", "input": "x", "reference": "y"}]


def test_write_and_read_prepared_round_trip(tmp_path):
    manifest = MANIFEST
    assert set(manifest) == set(MANIFEST_KEYS)
    shots = [{"input": "a\nb", "reference": "ü"}]
    test = [{"id": "0", "input": "x", "reference": "y"}]
    out = write_prepared(tmp_path / "p", shots, test, manifest)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shots.jsonl", "test.jsonl"]  # no temp files
    assert (out / "shots.jsonl").read_text(encoding="utf-8") == '{"input": "a\\nb", "reference": "ü"}\n'
    data = read_prepared(out)
    assert (data.shots, data.test, data.manifest, data.directory) == (shots, test, manifest, out.resolve())


def test_write_prepared_keyword_form_sets_the_tokenizer(tmp_path):
    manifest = {key: value for key, value in MANIFEST.items() if key != "tokenizer"}
    write_prepared(tmp_path, shots=[], test=TEST_ROWS, manifest=manifest, tokenizer="resources/models/tiny")
    assert read_prepared(tmp_path).manifest["tokenizer"] == "resources/models/tiny"
    write_prepared(tmp_path, [], TEST_ROWS, manifest, tokenizer=None)  # None is recorded, not missing
    assert read_prepared(tmp_path).manifest["tokenizer"] is None


def test_write_prepared_rejects_bad_input(tmp_path):
    manifest = MANIFEST
    with pytest.raises(ValueError, match="manifest is missing tokenizer"):
        write_prepared(tmp_path, [], [], {k: v for k, v in manifest.items() if k != "tokenizer"})
    with pytest.raises(ValueError, match="shot row 0"):
        write_prepared(tmp_path, [{"input": "a"}], [], manifest)
    with pytest.raises(ValueError, match="unique"):
        write_prepared(tmp_path, [], [{"id": "1", "input": "a", "reference": "b"}] * 2, manifest)


def test_read_prepared_errors(tmp_path):
    with pytest.raises(UserError, match="not a prepared dataset: missing shots.jsonl, test.jsonl, manifest.json"):
        read_prepared(tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"metric": "accuracy"}, "manifest.json: unknown metric 'accuracy' \\(known: mc_match, math_equiv, bleu_4\\)"),
    ({"prefix": None}, "manifest.json: prefix must be a string"),
    ({"stop": ["\n\n", ""]}, "manifest.json: stop must be a list of non-empty strings"),
    ({"max_new_tokens": True}, "manifest.json: max_new_tokens must be a positive integer"),
    ({"max_new_tokens": 0}, "manifest.json: max_new_tokens must be a positive integer"),
])  # fmt: skip
def test_read_prepared_checks_the_manifest(tmp_path, change, message):
    write_prepared(tmp_path, [], TEST_ROWS, MANIFEST | change)
    with pytest.raises(UserError, match=message):
        read_prepared(tmp_path)


def test_read_prepared_checks_the_rows(tmp_path):
    write_prepared(tmp_path, [], [], MANIFEST)
    with pytest.raises(UserError, match="test.jsonl has no test instances"):
        read_prepared(tmp_path)
    (tmp_path / "test.jsonl").write_text('{"id": "0", "input": "x", "reference": "y"}\n' * 2)
    with pytest.raises(UserError, match="test.jsonl has duplicate ids"):
        read_prepared(tmp_path)
    (tmp_path / "shots.jsonl").write_text('{"input": "x", "reference": 7}\n')
    with pytest.raises(UserError, match="shots.jsonl row 0: reference must be a string"):
        read_prepared(tmp_path)
    (tmp_path / "shots.jsonl").write_text('{"input": "x"')
    with pytest.raises(UserError, match="corrupt prepared-data file"):
        read_prepared(tmp_path)
