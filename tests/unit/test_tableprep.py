"""maas/serving/tableprep.py: the column transforms training and serving share."""

from __future__ import annotations

import numpy as np
import pytest
from maas.serving import tableprep as tp
from maas.serving.textprep import HashedNgrams


def _spec() -> dict:
    train = {
        "age": [30.0, np.nan, 50.0, 40.0],
        "island": ["Biscoe", "Dream", None, "Biscoe"],
        "when": ["2024-01-01", "2024-06-15T12:30:00+02:00", None, "2023-12-31"],
        "member": [True, False, None, True],
    }
    columns = [
        tp.fit_column("age", tp.NUMERIC, train["age"], "FP64"),
        tp.fit_column("island", tp.CATEGORICAL, train["island"], "BYTES"),
        tp.fit_column("when", tp.DATETIME, train["when"], "BYTES"),
        tp.fit_column("member", tp.BOOLEAN, train["member"], "BOOL"),
    ]
    return tp.make_spec(columns, [{"name": "id", "reason": "an identifier"}])


def test_fit_records_the_training_medians_categories_and_indicators() -> None:
    age, island, when, member = _spec()["columns"]
    assert age["median"] == 40.0 and age["indicator"] is True
    # a category seen once in training teaches nothing: only Biscoe (twice) is kept
    assert island["categories"] == ["Biscoe"]
    assert when["indicator"] is True and len(when["medians"]) == 5
    assert member["median"] == 1.0


def test_encode_imputes_missing_and_buckets_unknown_categories() -> None:
    # GIVEN the fitted spec
    encoder = tp.TableEncoder(_spec())
    # WHEN rows with gaps and a category never seen in training are encoded
    x = encoder.encode(
        {
            "age": (np.array([np.nan, 20.0]), None),
            "island": (np.array(["Torgersen", ""], dtype=object), None),
            "when": (np.array(["2024-03-04T05:00", ""], dtype=object), np.array([False, True])),
            "member": (np.array([False, True]), np.array([True, False])),
        }
    )
    names = encoder.feature_names
    row0, row1 = dict(zip(names, x[0], strict=True)), dict(zip(names, x[1], strict=True))
    # THEN numbers take the median and say so; the unknown and the empty category have slots
    assert (row0["age"], row0["age__missing"]) == (40.0, 1.0)
    assert (row1["age"], row1["age__missing"]) == (20.0, 0.0)
    assert row0["island=<unknown>"] == 1.0 and row0["island=Biscoe"] == 0.0
    assert row1["island=<missing>"] == 1.0
    assert (row0["when__year"], row0["when__month"], row0["when__hour"]) == (2024, 3, 5)
    assert row0["when__weekday"] == 0  # a Monday
    assert row1["when__missing"] == 1.0
    assert row0["member"] == 1.0 and row0["member__missing"] == 1.0
    assert x.dtype == np.float32 and x.shape == (2, encoder.n_features)


def test_time_zones_are_converted_to_utc() -> None:
    stamp = tp.parse_datetime("2024-06-15T12:30:00+02:00")
    assert stamp is not None and (stamp.hour, stamp.minute) == (10, 30)


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("when", ["yesterday"], "not an ISO 8601 date"),
        ("age", [float("inf")], "infinite"),
        ("member", ["maybe"], "not a boolean"),
        ("age", ["forty"], "must be numbers"),
    ],
)
def test_a_value_the_column_cannot_take_names_the_column(
    column: str, values: list, message: str
) -> None:
    encoder = tp.TableEncoder(_spec())
    good = {
        "age": (np.array([1.0]), None),
        "island": (np.array(["Biscoe"], dtype=object), None),
        "when": (np.array(["2024-01-01"], dtype=object), None),
        "member": (np.array([True]), None),
    }
    good[column] = (np.array(values, dtype=object), None)
    with pytest.raises(tp.TableInputError, match=f"column '{column}'.*{message}"):
        encoder.encode(good)


def test_category_keys_join_numbers_and_their_strings() -> None:
    assert tp.category_key(3) == tp.category_key(3.0) == tp.category_key("3") == "3"
    assert tp.category_key(None) is None and tp.category_key("") is None
    assert tp.category_key(float("nan")) is None
    assert tp.category_key(True) == "true"


def test_text_columns_hash_ngrams_with_the_text_recipes_encoder() -> None:
    column = tp.fit_column("review", tp.TEXT, ["a fine day"], "BYTES", HashedNgrams)
    encoder = tp.TableEncoder(tp.make_spec([column], []), HashedNgrams)
    x = encoder.encode({"review": (np.array(["a fine day", None], dtype=object), None)})
    assert x.shape == (2, tp.TEXT_BUCKETS)
    assert np.isclose(np.linalg.norm(x[0]), 1.0) and not x[1].any()


def test_an_all_numeric_table_is_one_matrix_with_nan_for_missing() -> None:
    columns = [tp.fit_column(n, tp.NUMERIC, [1.0, 2.0, 3.0], "FP64") for n in ("a", "b")]
    spec = tp.make_spec(columns, [])
    encoder = tp.TableEncoder(spec)
    assert spec["matrix"] is True and encoder.n_features == 2  # no gaps in training: no flags
    x = encoder.encode_matrix(np.array([[np.nan, 5.0]]))
    assert x.tolist() == [[2.0, 5.0]]
