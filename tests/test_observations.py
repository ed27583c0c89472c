"""The observations table: loading, validation messages, task averaging."""

import logging

import numpy as np
import pandas as pd
import pytest

from ctxscale.errors import UserError
from ctxscale.observations import (OBSERVATION_COLUMNS, load_observations, select_task, task_cells,
                                   validate_observations)


def table(**overrides):
    rows = [
        # model, task, dataset, n_shots, n_pmt, n_ctx, compute, score, n_instances
        ("m7", "ar", "gsm", 0, 100.0, 4096, 7.77e22, 0.10, 250),
        ("m7", "ar", "math", 0, 300.0, 4096, 7.77e22, 0.30, 200),
        ("m7", "ar", "gsm", 1, 400.0, 4096, 7.77e22, 0.20, 250),
        ("m7", "ar", "math", 1, 800.0, 4096, 7.77e22, 0.50, 200),
        ("m13", "ar", "gsm", 0, 100.0, 8192, 1.52e23, 0.15, 250),
        ("m13", "ar", "math", 0, 300.0, 8192, 1.52e23, 0.35, 200),
        ("m7", "mt", "wmt14-de-en", 0, 50.0, 4096, 7.77e22, 0.05, 250),
    ]
    frame = pd.DataFrame(rows, columns=OBSERVATION_COLUMNS)
    for column, (row, value) in overrides.items():
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
    return frame


def test_task_cells_average_datasets_hand_worked():
    cells = task_cells(validate_observations(table()))
    assert list(cells.columns) == OBSERVATION_COLUMNS
    m7_ar_0 = cells[(cells.model == "m7") & (cells.task == "ar") & (cells.n_shots == 0)].iloc[0]
    assert m7_ar_0["score"] == pytest.approx(0.20)  # unweighted mean of 0.10 and 0.30, not (25 + 60)/450
    assert m7_ar_0["n_pmt"] == pytest.approx(200.0)
    assert m7_ar_0["n_instances"] == 450
    assert m7_ar_0["dataset"] == "all" and m7_ar_0["n_ctx"] == 4096 and m7_ar_0["compute"] == 7.77e22
    assert len(cells) == 4  # (m7, ar, 0), (m7, ar, 1), (m13, ar, 0), (m7, mt, 0)
    # averaging an already averaged table changes nothing
    pd.testing.assert_frame_equal(task_cells(cells), cells)


def test_task_cells_warns_when_dataset_sets_differ(caplog):
    frame = validate_observations(table().drop(index=5))  # m13 lacks math at 0 shots
    with caplog.at_level(logging.WARNING):
        task_cells(frame)
    assert "different dataset sets" in caplog.text


def test_load_csv_and_parquet_agree(tmp_path):
    frame = table()
    frame.to_csv(tmp_path / "obs.csv", index=False)
    frame.to_parquet(tmp_path / "obs.parquet", index=False)
    from_csv = load_observations(tmp_path / "obs.csv")
    from_parquet = load_observations(tmp_path / "obs.parquet")
    pd.testing.assert_frame_equal(from_csv, from_parquet)
    assert from_csv["n_shots"].dtype == np.int64 and from_csv["model"].tolist()[0] == "m7"


def test_model_names_that_look_numeric_stay_strings(tmp_path):
    frame = table()
    frame["model"] = frame["model"].map({"m7": "7", "m13": "13"})
    frame.to_csv(tmp_path / "obs.csv", index=False)
    assert set(load_observations(tmp_path / "obs.csv")["model"]) == {"7", "13"}


@pytest.mark.parametrize("overrides, message", [
    ({"score": (2, float("nan"))}, "column score has NaN or infinite values (row 2)"),
    ({"n_pmt": (1, float("inf"))}, "column n_pmt has NaN or infinite values (row 1)"),
    ({"score": (0, 1.5)}, "scores must lie in [0, 1], found 1.5 (row 0)"),
    ({"score": (0, -0.1)}, "scores must lie in [0, 1], found -0.1 (row 0)"),
    ({"compute": (3, 0.0)}, "compute must be positive, found 0 (row 3)"),
    ({"n_pmt": (4, -5.0)}, "n_pmt must be positive, found -5 (row 4)"),
    ({"n_ctx": (6, 0)}, "n_ctx must be positive"),
    ({"n_shots": (0, 1.5)}, "n_shots must be an integer >= 0, found 1.5 (row 0)"),
    ({"n_instances": (0, 0)}, "n_instances must be an integer >= 1, found 0 (row 0)"),
    ({"score": (0, "high")}, "column score has a non-numeric value 'high' (row 0)"),
    ({"model": (0, None)}, "column model has empty values (row 0)"),
    ({"compute": (2, 1e23)}, "model 'm7' has more than one compute value"),
])
def test_validation_names_the_problem(overrides, message):
    with pytest.raises(UserError) as info:
        validate_observations(table(**overrides), source="obs.csv")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_percentages_get_a_hint():
    frame = table()
    frame["score"] = frame["score"] * 100
    with pytest.raises(UserError, match="look like percentages, divide by 100"):
        validate_observations(frame)


def test_missing_columns_and_duplicates():
    with pytest.raises(UserError, match=r"missing column\(s\) n_pmt, score"):
        validate_observations(table().drop(columns=["n_pmt", "score"]))
    with pytest.raises(UserError, match=r"\('m7', 'ar', 'gsm', 0\) appears more than once"):
        validate_observations(pd.concat([table(), table().iloc[:1]]))
    with pytest.raises(UserError, match="has no rows"):
        validate_observations(table().iloc[:0])


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_observations(tmp_path / "nope.csv")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="cannot read observations file"):
        load_observations(tmp_path / "bad.parquet")


def test_select_task_unknown_names():
    frame = validate_observations(table())
    assert len(select_task(frame, "ar", ["gsm"])) == 3
    with pytest.raises(UserError, match="unknown task 'cs'; the observations hold ar, mt"):
        select_task(frame, "cs")
    with pytest.raises(UserError, match="unknown dataset"):
        select_task(frame, "ar", ["piqa"])
