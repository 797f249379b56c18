"""The training job (training/train.py) under the SageMaker contract, relocated by MAAS_OPT_ML.

The slow tests train real models in a subprocess, exactly as the local runner does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from maas.core import contract
from maas_training.data import encode_labels, split_indices
from maas_training.errors import TrainingError
from maas_training.hyperparameters import decode_value, parse_hyperparameters

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "training" / "train.py"


def _env(base: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "MAAS_"))}
    env.pop("WORLD_SIZE", None)
    env.pop("LOCAL_RANK", None)
    env["MAAS_OPT_ML"] = str(base)
    env.update(extra)
    return env


def _setup(base: Path, frames: dict[str, pd.DataFrame], hp: dict[str, object]) -> None:
    channel = base / "input" / "data" / "train"
    channel.mkdir(parents=True)
    for name, df in frames.items():
        path = channel / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".csv"):
            df.to_csv(path, index=False)
        elif name.endswith(".parquet"):
            df.to_parquet(path, index=False)
        else:
            df.to_json(path, orient="records", lines=True)
    (channel / "job.json").write_text('{"label": "ignored by the training job"}')
    config = base / "input" / "config"
    config.mkdir(parents=True)
    # SageMaker passes every hyperparameter as a JSON-encoded string.
    (config / "hyperparameters.json").write_text(
        json.dumps({k: json.dumps(v) for k, v in hp.items()})
    )


Started = tuple[subprocess.Popen, Path]


def _start(base: Path, *, block_maas: bool = False, **env: str) -> Started:
    if block_maas:  # the container ships training/ only: the job must not need the maas package
        script = repr(str(TRAIN_PY))
        code = (
            "import sys, runpy; sys.modules['maas'] = None; "
            f"sys.argv = [{script}]; runpy.run_path({script}, run_name='__main__')"
        )
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, str(TRAIN_PY)]
    # Files, not pipes: two jobs run at once and neither may block on a full pipe.
    with (base / "job.stdout").open("w") as out, (base / "job.stderr").open("w") as err:
        proc = subprocess.Popen(cmd, env=_env(base, **env), stdout=out, stderr=err, cwd=base)
    return proc, base


def _wait(started: Started) -> subprocess.CompletedProcess:
    proc, base = started
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        (base / "job.stdout").read_text(),
        (base / "job.stderr").read_text(),
    )


def _run(base: Path, *, block_maas: bool = False, **env: str) -> subprocess.CompletedProcess:
    return _wait(_start(base, block_maas=block_maas, **env))


def _digits_frame() -> pd.DataFrame:
    from sklearn.datasets import load_digits

    digits = load_digits(as_frame=True)
    return digits.frame.rename(columns={"target": "digit"})


def _blobs(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    names = np.array(["setosa", "versicolor", "virginica"])
    y = rng.integers(0, 3, size=n)
    centers = np.array([[0.0, 0.0, 0.0], [3.0, 3.0, 0.0], [0.0, 3.0, 3.0]])
    x = centers[y] + rng.normal(scale=0.6, size=(n, 3))
    df = pd.DataFrame(x * [1.0, 100.0, 0.01] + [0.0, 500.0, -2.0], columns=["f1", "f2", "f3"])
    df["species"] = names[y]
    return df


# --- end to end (subprocess) --------------------------------------------------------------


Job = tuple[Path, subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Job]:
    """The two training runs, started together (each trains on one thread)."""
    digits = tmp_path_factory.mktemp("digits")
    _setup(digits, {"digits.csv": _digits_frame()}, {"label": "digit", "unknown_knob": 3})
    blobs = tmp_path_factory.mktemp("blobs")
    df = _blobs()
    _setup(
        blobs,
        {"a.parquet": df.iloc[:120], "more/b.jsonl": df.iloc[120:]},
        {"label": "species", "epochs": 25, "seed": 3},
    )
    # The TorchScript exporter for this one (digits covers the default, dynamo): both must give
    # the same contract, and this one is ~8 s faster.
    started = {
        "digits": _start(digits),
        "blobs": _start(blobs, MAAS_ONNX_EXPORTER="torchscript"),
    }
    return {name: (job[1], _wait(job)) for name, job in started.items()}


@pytest.fixture(scope="module")
def digits_job(jobs: dict[str, Job]) -> Job:
    return jobs["digits"]


@pytest.mark.slow
def test_digits_trains_to_contract(digits_job: Job) -> None:
    base, proc = digits_job
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = base / "model"
    expected = {
        contract.MODEL_FILE,
        contract.SAMPLE_FILE,
        contract.CALIBRATION_FILE,
        contract.METRICS_FILE,
        contract.LABELS_FILE,
        contract.SCHEMA_FILE,
        contract.PLOT_FILE,
        contract.COMPRESSED_FILE,
        contract.COMPRESSED_DIR,
        contract.TABLE_SPEC_FILE,
    }
    assert {p.name for p in model_dir.iterdir()} == expected
    table = json.loads((model_dir / contract.TABLE_SPEC_FILE).read_text())
    # all numeric, no gaps: one FP32 matrix in, the same 64 features to the graph
    assert table["matrix"] is True and len(table["columns"]) == 64
    assert not (base / "output" / "failure").exists()
    assert sorted(p.name for p in (base / "checkpoints").glob("checkpoint-*.pt"))

    metrics = json.loads((model_dir / contract.METRICS_FILE).read_text())
    assert metrics["test_accuracy"] >= 0.95
    assert metrics["n_features"] == 64 and metrics["n_classes"] == 10
    assert metrics["exporter"] == "dynamo" and metrics["onnx_max_abs_diff"] < 1e-4
    assert metrics["n_train"] + metrics["n_validation"] + metrics["n_test"] == 1797
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"] <= 200
    for key in ("task", "val_loss", "device", "bf16", "train_seconds"):
        assert key in metrics
    assert "ignoring unknown hyperparameters: unknown_knob" in proc.stdout
    assert "epoch=1 train_loss=" in proc.stdout and "val_accuracy=" in proc.stdout

    labels = json.loads((model_dir / contract.LABELS_FILE).read_text())
    assert labels == [str(i) for i in range(10)]
    schema = json.loads((model_dir / contract.SCHEMA_FILE).read_text())
    assert schema["label_column"] == "digit"
    assert schema["features"] == [c for c in _digits_frame().columns if c != "digit"]
    assert [i["name"] for i in schema["inputs"]] == ["input"]
    assert [o["name"] for o in schema["outputs"]] == ["probabilities", "label"]

    key = contract.INPUT_PREFIX + "input"
    with np.load(model_dir / contract.SAMPLE_FILE, allow_pickle=False) as sample:
        assert set(sample.files) == {key, contract.TARGET_KEY}
        assert sample[key].dtype == np.float32 and sample[key].shape == (metrics["n_test"], 64)
        assert sample[contract.TARGET_KEY].dtype == np.int64
    with np.load(model_dir / contract.CALIBRATION_FILE, allow_pickle=False) as calib:
        assert calib[key].shape == (min(512, metrics["n_train"]), 64)


@pytest.mark.slow
def test_digits_compression_candidates_are_narrower_distilled_mlps(digits_job: Job) -> None:
    """The chosen MLP's students: narrower hidden layers, distilled, model.onnx's interface."""
    import onnxruntime as ort

    base, proc = digits_job
    model_dir = base / "model"
    metrics = json.loads((model_dir / contract.METRICS_FILE).read_text())
    assert metrics["hidden_layers_chosen"] >= 1  # digits picks a hidden layer: students exist
    entries = json.loads((model_dir / contract.COMPRESSED_FILE).read_text())
    assert metrics["compression"] == entries
    assert [e["name"] for e in entries] == ["hidden-64", "hidden-32"]  # hidden_units 128 / 2, / 4
    key = contract.INPUT_PREFIX + "input"
    with np.load(model_dir / contract.SAMPLE_FILE, allow_pickle=False) as sample:
        x, y = sample[key], sample[contract.TARGET_KEY]
    full = ort.InferenceSession(str(model_dir / contract.MODEL_FILE))
    want = full.run(["probabilities"], {"input": x})[0]
    for e in entries:
        assert e["file"] == f"{contract.COMPRESSED_DIR}/{e['name']}.onnx"
        assert e["parameters"] < e["teacher_parameters"]
        d = e["distillation"]
        assert d["steps"] > 0 and d["loss_kind"] == "logits" and 0 <= d["holdout_agreement"] <= 1
        sess = ort.InferenceSession(str(model_dir / e["file"]))
        assert [(i.name, i.type) for i in sess.get_inputs()] == [
            (i.name, i.type) for i in full.get_inputs()
        ]
        assert [o.name for o in sess.get_outputs()] == ["probabilities", "label"]
        probs, labels = sess.run(None, {"input": x})
        agreement = float((probs.argmax(1) == want.argmax(1)).mean())
        print(f"{e['name']}: test accuracy {(probs.argmax(1) == y).mean():.4f}, "
              f"agreement with model.onnx {agreement:.4f}")  # fmt: skip
        assert agreement >= 0.8 and set(labels) <= {str(i) for i in range(10)}
    assert "compression candidate hidden-64" in proc.stdout


@pytest.mark.slow
def test_digits_onnx_runs_in_onnxruntime(digits_job: Job) -> None:
    import onnx
    import onnxruntime as ort

    base, proc = digits_job
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = base / "model"
    path = str(model_dir / contract.MODEL_FILE)
    proto = onnx.load(path)
    assert proto.ir_version <= 10
    assert all(o.version <= 21 for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    for vi in [*proto.graph.input, *proto.graph.output]:
        assert vi.type.tensor_type.shape.dim[0].dim_param, f"{vi.name}: batch dim not dynamic"

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    labels = json.loads((model_dir / contract.LABELS_FILE).read_text())
    with np.load(model_dir / contract.SAMPLE_FILE) as sample:
        x, target = sample["input__input"], sample["target"]
    for n in (1, 7):
        probs, names = sess.run(["probabilities", "label"], {"input": x[:n]})
        assert probs.shape == (n, 10) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert list(names) == [labels[i] for i in probs.argmax(axis=1)]
    probs = sess.run(["probabilities"], {"input": x})[0]
    assert (probs.argmax(axis=1) == target).mean() >= 0.95


@pytest.mark.slow
def test_parquet_and_jsonl_with_string_labels(jobs: dict[str, Job]) -> None:
    import onnxruntime as ort

    df = _blobs()
    tmp_path, proc = jobs["blobs"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = tmp_path / "model"
    assert json.loads((model_dir / "labels.json").read_text()) == [
        "setosa",
        "versicolor",
        "virginica",
    ]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_validation"] + metrics["n_test"] == len(df)
    assert metrics["epochs_run"] <= 25
    assert metrics["test_accuracy"] >= 0.9
    assert metrics["exporter"] == "torchscript"
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    raw = df[["f1", "f2", "f3"]].to_numpy(np.float32)[:5]  # raw values: scaling is in the graph
    _, names = sess.run(None, {"input": raw})
    assert list(names) == list(df["species"][:5])


def test_missing_label_column_fails_with_reason(tmp_path: Path) -> None:
    _setup(tmp_path, {"data.csv": _blobs(40)}, {"label": "kind"})
    proc = _run(tmp_path, block_maas=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    reason = (tmp_path / "output" / "failure").read_text()
    assert "label column 'kind' not found" in reason
    assert "f1, f2, f3, species" in reason
    assert "Traceback" in proc.stderr  # the traceback goes to stderr, the reason to the file
    assert not (tmp_path / "model" / "model.onnx").exists()


def test_string_feature_is_typed_categorical_and_served_per_column(tmp_path: Path) -> None:
    # GIVEN a table with a string column and an ID column (once refused as "non-numeric")
    df = _blobs(40)
    df["colour"] = ["red", "blue"] * 20
    df.insert(0, "sample_id", [f"s{i:04d}" for i in range(40)])
    _setup(tmp_path, {"data.csv": df}, {"label": "species", "epochs": 5})
    # WHEN the job runs
    proc = _run(tmp_path, MAAS_ONNX_EXPORTER="torchscript")
    # THEN it trains, says how it typed each column, and serves one input per column
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "column 'colour': categorical (strings, 2 distinct, served as BYTES)" in proc.stdout
    assert "column 'sample_id': ignore (an identifier: a different value" in proc.stdout
    assert "task classification: the label holds strings" in proc.stdout
    schema = json.loads((tmp_path / "model" / contract.SCHEMA_FILE).read_text())
    assert [i["name"] for i in schema["inputs"]] == ["f1", "f2", "f3", "colour"]
    assert schema["inputs"][3] == {
        "name": "colour",
        "datatype": "BYTES",
        "shape": [-1],
        "parameters": {"role": "categorical"},
    }


def test_sm_variables_win_over_base(tmp_path: Path) -> None:
    base = tmp_path / "base"
    _setup(base, {"data.csv": _blobs(5)}, {"label": "species"})
    out = tmp_path / "elsewhere"
    proc = _run(base, SM_OUTPUT_DIR=str(out))
    assert proc.returncode == 1
    assert "only 5 rows have a label" in (out / "failure").read_text()
    assert not (base / "output" / "failure").exists()


def _ddp_env() -> dict[str, str]:
    """Two ranks on this CPU host: SM_NUM_GPUS=2 makes the job relaunch itself under torchrun."""
    from maas_local.stack import free_port

    return {
        "SM_NUM_GPUS": "2",
        "SM_HOSTS": '["algo-1"]',
        "SM_CURRENT_HOST": "algo-1",
        "MAAS_MASTER_PORT": str(free_port()),
        "MAAS_ONNX_EXPORTER": "torchscript",
        "OMP_NUM_THREADS": "1",
    }


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_data_parallel_on_cpu_via_torchrun(tmp_path: Path) -> None:
    """SM_NUM_GPUS=2 on a CPU host: relaunch under torchrun, 2 gloo ranks, rank 0 writes."""
    _setup(tmp_path, {"data.csv": _blobs()}, {"label": "species", "epochs": 10})
    proc = _run(tmp_path, **_ddp_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launching data-parallel training" in proc.stdout
    assert "rank 1/2" in proc.stdout and "gloo" in proc.stdout
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["test_accuracy"] >= 0.9
    assert (tmp_path / "model" / "training.png").is_file()


def _descendants(pid: int) -> list[int]:
    """Every process below pid (torchrun starts its workers in sessions of their own, so
    killing the job's process group would leave them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc to kill the job")
def test_data_parallel_job_killed_mid_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """A spot interruption: the whole job (torchrun and both ranks) dies at once after a few
    epochs; SageMaker restarts it with /opt/ml/checkpoints restored, and it carries on."""
    import contextlib
    import signal
    import time

    _setup(
        tmp_path,
        {"data.csv": _blobs(20_000, seed=1)},
        {"label": "species", "recipe": "mlp", "epochs": 30, "patience": 100},
    )
    env = _env(tmp_path, **_ddp_env())
    # GIVEN a two-rank job that is killed (SIGKILL, no clean-up) once epoch 3 is logged
    with (tmp_path / "first.stdout").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(TRAIN_PY)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while "epoch=3 " not in (tmp_path / "first.stdout").read_text():
            assert proc.poll() is None, (tmp_path / "first.stdout").read_text()[-3000:]
            assert time.monotonic() < deadline, "the job never reached epoch 3"
            time.sleep(0.05)
        # The machine goes away: the entry point, torchrun and both ranks die at once.
        for pid in [proc.pid, *_descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)
    first = (tmp_path / "first.stdout").read_text()
    assert "epoch=30 " not in first
    assert (tmp_path / "checkpoints" / "checkpoint-h2.pt").is_file()
    assert not (tmp_path / "model" / "metrics.json").exists()
    # WHEN the same job starts again on the same /opt/ml
    second = _run(tmp_path, **_ddp_env())
    # THEN it resumes after the last checkpointed epoch instead of starting over
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from checkpoint at epoch" in second.stdout, second.stdout[:3000]
    assert (tmp_path / "first.stdout").read_text() == first  # nothing of run 1 lived on
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["resumed_from_epoch"] >= 3
    assert metrics["epochs_run"] == 30
    assert "epoch=1 " not in second.stdout
    # the history spans both runs: every epoch once
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, 31))


# --- pieces (in process, fast) ------------------------------------------------------------


def test_hyperparameters_decode_like_sagemaker() -> None:
    assert decode_value('"species"') == "species"
    assert decode_value("species") == "species"  # not JSON: the raw string
    assert decode_value("200") == 200
    hp = parse_hyperparameters(
        {
            "epochs": "10",
            "label": '"species"',
            "learning_rate": "0.01",
            "dropout": "0",
            "sagemaker_program": '"train.py"',
            "mystery": "1",
        }
    )
    assert (hp.epochs, hp.label, hp.learning_rate, hp.dropout) == (10, "species", 0.01, 0.0)
    assert hp.ignored == ("mystery",)
    assert parse_hyperparameters({}).batch_size == 64
    with pytest.raises(TrainingError, match="epochs must be an integer"):
        parse_hyperparameters({"epochs": "2.5"})
    with pytest.raises(TrainingError, match="test_fraction"):
        parse_hyperparameters({"test_fraction": "0.7"})
    with pytest.raises(TrainingError, match="not supported"):
        parse_hyperparameters({"task": '"forecasting"'})
    with pytest.raises(TrainingError, match="not known for task embedding"):
        parse_hyperparameters({"task": '"embedding"', "recipe": '"ngram"'})
    text = parse_hyperparameters({"task": '"text-classification"'})
    assert (text.recipe, text.epochs, text.patience) == ("ngram", 30, 3)  # the recipe's defaults
    assert parse_hyperparameters({"task": '"text-classification"', "epochs": "7"}).epochs == 7


def test_labels_sort_numerically_when_integral() -> None:
    targets, names = encode_labels(pd.Series([10, 2, 1, 2], name="y"))
    assert names == ["1", "2", "10"] and targets.tolist() == [2, 1, 0, 1]
    _, names = encode_labels(pd.Series([1.0, 3.0, 1.0], name="y"))
    assert names == ["1", "3"]
    _, names = encode_labels(pd.Series([10.5, 2.5, 2.5], name="y"))
    assert names == ["2.5", "10.5"]
    _, names = encode_labels(pd.Series(["b", "a", "c"], name="y"))
    assert names == ["a", "b", "c"]


def test_stratified_split_is_proportional_disjoint_and_seeded() -> None:
    y = np.repeat(np.arange(3), [100, 60, 40])
    s = split_indices(y, 0.15, 0.15, seed=7)
    assert s.stratified
    all_idx = np.concatenate([s.train, s.validation, s.test])
    assert sorted(all_idx.tolist()) == list(range(200))
    assert len(s.test) == 30 and len(s.validation) == 30
    assert np.bincount(y[s.test]).tolist() == [15, 9, 6]
    again = split_indices(y, 0.15, 0.15, seed=7)
    assert np.array_equal(s.test, again.test)
    assert not np.array_equal(s.test, split_indices(y, 0.15, 0.15, seed=8).test)


def test_split_falls_back_when_a_class_is_tiny() -> None:
    y = np.array([0] * 30 + [1] * 2)
    s = split_indices(y, 0.15, 0.15, seed=0)
    assert not s.stratified
    assert len(s.train) + len(s.validation) + len(s.test) == 32
    assert min(len(s.validation), len(s.test)) >= 1


def _load_table(channel: Path, **hp: object):
    from types import SimpleNamespace

    from maas_training.recipes import tabular

    return tabular.load(SimpleNamespace(train_channel=channel), parse_hyperparameters(hp))


@pytest.mark.parametrize(
    ("frame", "hp", "message"),
    [
        (pd.DataFrame({"a": [1.0, np.inf] * 10, "label": [0, 1] * 10}), {}, "'a': infinite"),
        (pd.DataFrame({"a": range(20), "label": [1] * 20}), {}, "at least 2 classes"),
        (
            pd.DataFrame({"a": range(20), "label": [0, None, None, None] * 5}),
            {},
            "only 5 rows have a label in column 'label' \\(15 have none\\)",
        ),
        (pd.DataFrame({"label": [0, 1] * 10}), {}, "no feature columns"),
        (
            pd.DataFrame({"a": range(20), "gone": [None] * 20, "label": [0, 1] * 10}),
            {},
            "'gone' are empty throughout",
        ),
        (
            pd.DataFrame(
                {"a": range(12), "code": [f"c{i}" for i in range(12)], "label": [0, 1] * 6}
            ),
            {"columns": {"code": "categorical"}},
            "'code' is set to categorical in job.json but has a different value in every row",
        ),
        (
            pd.DataFrame({"a": ["x", "2"] * 10, "label": [0, 1] * 10}),
            {"columns": {"a": "numeric"}},
            "'a' is set to numeric in job.json but holds 10 value\\(s\\) that are not numbers",
        ),
        (
            pd.DataFrame({"a": ["x"] * 20, "label": [0, 1] * 10}),
            {"columns": {"b": "numeric"}},
            "names columns the data lacks: b",
        ),
        (
            pd.DataFrame({**{f"c{i}": range(20) for i in range(5)}, "label": [0, 1] * 10}),
            {"max_columns": 4},
            "5 feature columns, more than max_columns=4",
        ),
        (
            pd.DataFrame({"a": ["2024-01-01", "soon"] * 10, "label": [0, 1] * 10}),
            {"columns": {"a": "datetime"}},
            "'a' is set to datetime in job.json but its values are not ISO 8601 dates",
        ),
    ],
)
def test_bad_data_is_explained(
    tmp_path: Path, frame: pd.DataFrame, hp: dict[str, object], message: str
) -> None:
    frame.to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.raises(TrainingError, match=message):
        _load_table(tmp_path, label="label", **hp)


def test_empty_channel_is_explained(tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text("{}")
    with pytest.raises(TrainingError, match="no data files"):
        _load_table(tmp_path, label="label")


@pytest.mark.parametrize(
    ("label", "task", "why"),
    [
        (["a", "b"] * 10, "classification", "the label holds strings or true/false"),
        ([1.5, 2.25] * 10, "regression", "non-integral numbers"),
        (list(range(30)), "regression", "30 distinct integers"),
        ([0, 1, 2, 3] * 5, "classification", "4 distinct integers"),
    ],
)
def test_task_is_detected_from_the_label_and_said_why(
    tmp_path: Path, label: list, task: str, why: str
) -> None:
    frame = pd.DataFrame({"a": np.arange(float(len(label))), "y": label})
    frame.to_csv(tmp_path / "d.csv", index=False)
    data = _load_table(tmp_path, label="y")
    assert data.task == task and why in data.metrics["task_reason"]
    if task == "regression":  # standardised on the training split; the scale undoes it
        assert data.target_scale is not None and data.y.dtype == np.float32
        assert np.allclose(data.targets(np.arange(len(label))), label)


def test_task_in_job_json_overrides_the_detection(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": np.arange(20.0), "y": [0, 1, 2, 3] * 5})
    frame.to_csv(tmp_path / "d.csv", index=False)
    data = _load_table(tmp_path, label="y", task="regression")
    assert data.task == "regression" and data.metrics["task_reason"] == "set in job.json"


def test_missing_cells_are_imputed_from_the_training_split_and_flagged(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"a": [1.0, np.nan, 3.0, 4.0] * 10, "b": ["x", None, "y", "x"] * 10, "y": [0, 1] * 20}
    )
    frame.to_csv(tmp_path / "d.csv", index=False)
    data = _load_table(tmp_path, label="y")
    spec = data.table_spec
    assert spec is not None and not spec["matrix"]
    a, b = spec["columns"]
    assert a["indicator"] is True and a["median"] == float(
        np.median(
            frame["a"].to_numpy()[data.split.train][
                ~np.isnan(frame["a"].to_numpy()[data.split.train])
            ]
        )
    )
    assert b["categories"] == ["x", "y"]
    assert "a__missing" in data.schema["features"] and "b=<missing>" in data.schema["features"]
    assert np.isfinite(data.x).all()


def test_export_falls_back_to_torchscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the dynamo exporter breaks (old torch, missing onnxscript), the job still exports."""
    torch = pytest.importorskip("torch")
    from maas_training import export
    from maas_training.model import Probabilities, TabularMLP

    def broken(*args: object, **kwargs: object) -> None:
        raise ImportError("onnxscript is not installed")

    monkeypatch.setattr(export, "_export_dynamo", broken)
    torch.manual_seed(0)
    model = TabularMLP(4, 3, hidden_units=8, hidden_layers=1)
    model.scaler.fit(np.random.default_rng(0).normal(5.0, 3.0, size=(50, 4)))
    x = np.random.default_rng(1).normal(5.0, 3.0, size=(9, 4)).astype(np.float32)
    info = export.export_model(
        Probabilities(model),
        tmp_path / "model.onnx",
        feeds={contract.FEATURES_INPUT: x},
        output_name=contract.PROBABILITIES_OUTPUT,
        class_names=["a", "b", "c"],
        metadata={},
        max_abs_diff=1e-4,
    )
    assert info.exporter == "torchscript" and info.max_abs_diff < 1e-4


def test_every_recipe_of_the_contract_has_a_training_recipe() -> None:
    from maas_training import recipes

    registered = recipes.load_all()
    assert set(registered) == {(t, r) for t, rs in contract.RECIPES.items() for r in rs}
    # only the pretrained imports skip training (and so the torchrun relaunch)
    assert {key for key, recipe in registered.items() if not recipe.trains} == {
        ("text-classification", "import"),
        ("embedding", "import"),
        ("text-generation", "import"),
    }


def test_hyperparameter_names_and_defaults_are_the_contracts_on_both_sides() -> None:
    from maas.ingest.jobspec import HYPERPARAMETER_BOUNDS, UNSENT_UNLESS_SET, JobSpec
    from maas_training.hyperparameters import BOUNDS, Hyperparameters

    names = set(contract.HYPERPARAMETERS)
    # each side bounds every knob of the table, and no other
    assert set(BOUNDS) == names and set(HYPERPARAMETER_BOUNDS) == names
    spec = JobSpec().hyperparameters
    assert set(type(spec).model_fields) == names
    # the defaults are the table's (the job spec leaves the text knobs to the job)
    job = Hyperparameters()
    assert {n: getattr(job, n) for n in names} == contract.HYPERPARAMETERS
    sent = {n: getattr(spec, n) for n in names if n not in UNSENT_UNLESS_SET}
    assert sent == {n: d for n, d in contract.HYPERPARAMETERS.items() if n not in UNSENT_UNLESS_SET}
    # no task: a table, whose label decides between classification and regression
    assert (job.task, job.label, job.text) == (
        contract.DETECT_TASK,
        contract.DEFAULT_LABEL,
        contract.DEFAULT_TEXT,
    )


def test_a_new_recipe_is_its_data_and_its_model_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    from maas_training import recipes, steps
    from maas_training.config import Paths
    from maas_training.hyperparameters import parse_hyperparameters

    # GIVEN a recipe that brings only its encoded rows and a model builder
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)

    def load(paths: Paths, hp: object) -> recipes.Encoded:
        return recipes.Encoded(
            x=x,
            y=y,
            split=split_indices(y, 0.15, 0.15, seed=0),
            class_names=["no", "yes"],
            input_name=contract.FEATURES_INPUT,
            fingerprint="toy",
            files=[],
            schema={"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 5]}]},
        )

    def build(data: recipes.Encoded, hp: object, x_fit: np.ndarray) -> object:
        return torch.nn.Linear(5, 2)

    recipe = recipes.TrainedRecipe("classification", "toy", load, build, refit=True)
    with pytest.raises(ValueError, match="not in the contract's RECIPES table"):
        recipes.register(recipe)  # a new family also gets its row in the contract
    for name in [k for k in os.environ if k.startswith(("SM_", "MAAS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("MAAS_OPT_ML", str(tmp_path))
    monkeypatch.setenv("MAAS_ONNX_EXPORTER", "torchscript")
    # WHEN the shared steps run it
    metrics = steps.run(
        Paths.from_env(), parse_hyperparameters({"epochs": "60", "learning_rate": "0.05"}), recipe
    )
    # THEN it was fitted, refitted, exported, checked and written like every recipe
    model_dir = tmp_path / "model"
    written = {p.name for p in model_dir.iterdir()}
    assert written == {
        *contract.REQUIRED_MODEL_FILES,
        contract.CALIBRATION_FILE,
        contract.PLOT_FILE,
        contract.COMPRESSED_FILE,  # [] here: a model family of its own gets no students
    }
    assert json.loads((model_dir / contract.COMPRESSED_FILE).read_text()) == []
    assert metrics["test_accuracy"] >= 0.9 and metrics["refit_epochs"] >= 1
    assert metrics["onnx_test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    schema = json.loads((model_dir / contract.SCHEMA_FILE).read_text())
    assert [o["name"] for o in schema["outputs"]] == ["probabilities", "label"]
    assert json.loads((tmp_path / "output" / "data" / contract.METRICS_FILE).read_text()) == metrics


def test_balance_classes_weighs_each_class_by_the_inverse_of_its_share(tmp_path: Path) -> None:
    # GIVEN a table with one class four times the other
    frame = pd.DataFrame({"a": np.arange(50.0), "y": ["many"] * 40 + ["few"] * 10})
    frame.to_csv(tmp_path / "d.csv", index=False)
    # WHEN it is loaded without and with balance_classes
    plain = _load_table(tmp_path, label="y")
    data = _load_table(tmp_path, label="y", balance_classes=1)
    # THEN only the second weighs the classes, n / (k * count) on the training split
    assert plain.class_weights is None
    assert data.class_weights is not None and data.metrics["balance_classes"] is True
    counts = np.bincount(data.y[data.split.train], minlength=2)
    expected = len(data.split.train) / (2 * counts)
    assert np.allclose(data.class_weights, expected)
    few = data.class_names.index("few")
    assert data.class_weights[few] > 1.0 > data.class_weights[1 - few]
