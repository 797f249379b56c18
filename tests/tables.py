"""Real tables no one here wrote, and messy variants of them, for the tabular tests.

Every table ships inside an installable package (no download at run time): vega_datasets'
bundled ``cars`` and ``seattle-weather``, scikit-learn's ``diabetes`` and ``breast_cancer``,
statsmodels' ``fair``. ``messy`` makes a user's version of a clean table: codes turned into
strings, an ID column, 10 % of the feature cells blanked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

HELD_BACK = 0.25  # scored over HTTP, never uploaded


@dataclass(frozen=True)
class Table:
    name: str  # the model name too
    frame: pd.DataFrame
    label: str
    task: str  # what the training job should detect
    source: str


def messy(frame: pd.DataFrame, label: str, seed: int = 0, share: float = 0.10) -> pd.DataFrame:
    """An ID column first, and `share` of every feature column's cells blanked."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    for c in out.columns:
        if c == label:
            continue
        blank = rng.random(len(out)) < share
        out[c] = out[c].astype(object).where(~blank, None)
    out.insert(0, "record_id", [f"r{100000 + i}" for i in range(len(out))])
    return out


def cars() -> Table:
    from vega_datasets import local_data

    frame = local_data.cars()
    frame["Year"] = frame["Year"].dt.strftime("%Y-%m-%d")
    return Table("cars-mpg", frame, "Miles_per_Gallon", "regression", "vega_datasets cars")


def weather() -> Table:
    from vega_datasets import local_data

    frame = local_data.seattle_weather()
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
    return Table("seattle-weather", frame, "weather", "classification", "vega_datasets")


def diabetes_messy() -> Table:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame["sex"] = frame["sex"].map({1.0: "female", 2.0: "male"})
    return Table(
        "diabetes-messy",
        messy(frame, "target"),
        "target",
        "regression",
        "scikit-learn diabetes, messy",
    )


def fair_messy() -> Table:
    import statsmodels.api as sm

    frame = sm.datasets.fair.load_pandas().data
    jobs = {1: "student", 2: "farming", 3: "white-collar", 4: "teacher", 5: "manager", 6: "prof"}
    frame["occupation"] = frame["occupation"].astype(int).map(jobs)
    frame["religious"] = (
        frame["religious"].astype(int).map({1: "not", 2: "mildly", 3: "fairly", 4: "strongly"})
    )
    frame["had_affair"] = np.where(frame.pop("affairs") > 0, "yes", "no")
    return Table(
        "fair-affairs",
        messy(frame, "had_affair", seed=1),
        "had_affair",
        "classification",
        "statsmodels fair, messy",
    )


def split(table: Table, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(uploaded, held back): the held-back quarter never reaches the training job."""
    rng = np.random.default_rng(seed)
    frame = table.frame[table.frame[table.label].notna()].reset_index(drop=True)
    order = rng.permutation(len(frame))
    n_back = round(len(frame) * HELD_BACK)
    back = frame.iloc[np.sort(order[:n_back])].reset_index(drop=True)
    # The uploaded part keeps the table's rows without a label: the job must drop them itself.
    unlabeled = table.frame[table.frame[table.label].isna()]
    up = pd.concat([frame.iloc[np.sort(order[n_back:])], unlabeled], ignore_index=True)
    return up, back


def baselines(table: Table, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    """The two scikit-learn baselines on the same split: accuracy, or R^2."""
    from sklearn.compose import ColumnTransformer, make_column_selector
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    features = [c for c in train.columns if c != table.label and c != "record_id"]
    x_train, x_test = _plain(train[features]), _plain(test[features])
    y_train, y_test = train[table.label], test[table.label]
    linear = ColumnTransformer(
        [
            (
                "num",
                make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                make_column_selector(dtype_include="number"),
            ),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="missing"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                make_column_selector(dtype_exclude="number"),
            ),
        ]
    )
    categorical = [c for c in features if x_train[c].dtype == object]
    hgb_x_train, hgb_x_test = x_train.copy(), x_test.copy()
    for c in categorical:
        known = sorted(set(hgb_x_train[c].dropna()))
        if len(known) > 255:  # past HistGradientBoosting's categorical limit: ordinal codes
            codes = {k: float(i) for i, k in enumerate(known)}
            hgb_x_train[c] = hgb_x_train[c].map(codes).astype(float)
            hgb_x_test[c] = hgb_x_test[c].map(codes).astype(float)
            continue
        kinds = pd.CategoricalDtype(known)
        hgb_x_train[c] = hgb_x_train[c].astype(kinds)
        hgb_x_test[c] = hgb_x_test[c].where(hgb_x_test[c].isin(known)).astype(kinds)
    if table.task == "regression":
        lin = make_pipeline(linear, RidgeCV()).fit(x_train, y_train)
        hgb = HistGradientBoostingRegressor(categorical_features="from_dtype", random_state=0)
        hgb.fit(hgb_x_train, y_train)
        return {"linear": lin.score(x_test, y_test), "hgb": hgb.score(hgb_x_test, y_test)}
    lin = make_pipeline(linear, LogisticRegression(max_iter=2000)).fit(x_train, y_train)
    hgb = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    hgb.fit(hgb_x_train, y_train)
    return {"linear": lin.score(x_test, y_test), "hgb": hgb.score(hgb_x_test, y_test)}


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers as floats, ISO dates as days since 1970, everything else as Python objects
    (what the baselines take)."""
    out = frame.copy()
    for c in out.columns:
        present = out[c].dropna().astype(str)
        if len(present) and present.str.match(r"^\d{4}-\d{2}-\d{2}").all():
            stamps = pd.to_datetime(out[c], errors="coerce")
            out[c] = (stamps - pd.Timestamp("1970-01-01")).dt.days.astype(float)
            continue
        numbers = pd.to_numeric(out[c], errors="coerce")
        if numbers.notna().sum() == out[c].notna().sum():
            out[c] = numbers.astype(float)
        else:
            out[c] = out[c].astype(object).where(out[c].notna(), None)
    return out


def oip_columns(frame: pd.DataFrame, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """An OIP JSON request built from the model's metadata alone: one input per column, the
    cells as the file has them, JSON null for an empty cell."""
    tensors = []
    for meta in inputs:
        values = frame[meta["name"]].to_list()
        data = [_cell(v, meta["datatype"]) for v in values]
        tensors.append(
            {"name": meta["name"], "datatype": meta["datatype"], "shape": [len(data)], "data": data}
        )
    return {"inputs": tensors}


def _cell(value: Any, datatype: str) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if datatype == "BYTES":
        return str(value)
    if datatype == "BOOL":  # the file's yes/no, true/false, 1/0 as JSON true/false
        return str(value).strip().lower() in ("true", "yes", "y", "t", "1")
    if datatype.startswith("INT"):
        return int(value)
    return float(value)


def mixed(n: int, seed: int = 0) -> pd.DataFrame:
    """A mixed table of any size: numbers with gaps, string categories, a yes/no column, a date,
    an ID column and free of nothing; the label ("churned") depends on most of them."""
    rng = np.random.default_rng(seed)
    plans = np.array(["basic", "plus", "pro", "family"])
    regions = np.array(["north", "south", "east", "west", "islands"])
    channels = np.array(["web", "store", "phone"])
    plan = rng.choice(plans, n, p=[0.4, 0.3, 0.2, 0.1])
    region = rng.choice(regions, n)
    tenure = rng.gamma(2.0, 12.0, n).round(1)
    monthly = (20 + 15 * (plan == "pro") + 8 * (plan == "plus") + rng.normal(0, 5, n)).round(2)
    calls = rng.poisson(1.5, n)
    autopay = rng.random(n) < 0.55
    signup = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 1500, n), unit="D")
    score = (
        -0.04 * tenure
        + 0.05 * monthly
        + 0.45 * calls
        - 0.9 * autopay
        + 0.6 * (region == "islands")
        - 0.5 * (plan == "family")
        + rng.normal(0, 1, n)
        - 1.0
    )
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{1_000_000 + i}" for i in range(n)],
            "plan": plan,
            "region": region,
            "channel": rng.choice(channels, n),
            "tenure_months": tenure,
            "monthly_fee": monthly,
            "support_calls": calls,
            "autopay": np.where(autopay, "yes", "no"),
            "signup_date": signup.strftime("%Y-%m-%d"),
            "discount": rng.choice([0.0, 5.0, 10.0], n),
            "churned": np.where(score > 0, "yes", "no"),
        }
    )
    for column in ("tenure_months", "monthly_fee", "region"):
        frame[column] = frame[column].astype(object).where(rng.random(n) >= 0.05, None)
    return frame
