"""Security checks that read the code and the template: pickle, grants, checkov, names.

- No pickle anywhere: the repository's Python never imports pickle (or joblib, dill, shelve,
  marshal, cloudpickle), never calls torch.load without weights_only=True, np.load with
  allow_pickle=True, pandas' read_pickle/to_pickle, or yaml's unsafe loaders.
- Each function's grants, resource by resource: its buckets and prefixes, its table, its
  queue, the one SageMaker action (ingest) and iam:PassRole of the training role alone.
- checkov over template.yaml: nothing failed; every skip carries its reason (in the
  resource's Metadata).
- Model and run names are checked before they become an S3 key.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from maas_devkit.cfn import as_list, evaluate, load_template, policy_statements
from maas_devkit.repo import REPO, TEMPLATE

SECTION = "Security"
SKIP_DIRS = {".venv", ".aws-sam", ".git", "build", "dist", "node_modules", ".maas", "bench/out"}
UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "joblib",
    "cloudpickle",
    "shelve",
    "marshal",
}
UNSAFE_YAML_LOADERS = {"Loader", "UnsafeLoader", "FullLoader"}
CHECKOV = REPO / ".venv" / "checkov" / "bin" / "checkov"


def python_files() -> list[Path]:
    files = []
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO).as_posix()
        if any(rel == d or rel.startswith(d + "/") for d in SKIP_DIRS):
            continue
        files.append(path)
    return files


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def pickle_findings(source: str, where: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for name in names:
                if name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{where}:{node.lineno}: imports {name}")
        if not isinstance(node, ast.Call):
            continue
        func = _dotted(node.func)
        tail = func.rsplit(".", 1)[-1]
        if func.endswith("torch.load"):
            weights_only = _keyword(node, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{where}:{node.lineno}: {func} without weights_only=True")
        if func.split(".")[0] in ("np", "numpy") and tail == "load":
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"{where}:{node.lineno}: {func} with allow_pickle")
        if tail in ("read_pickle", "to_pickle", "unsafe_load", "full_load"):
            found.append(f"{where}:{node.lineno}: {func}")
        if func in ("yaml.load", "yaml.load_all"):
            loader = _keyword(node, "Loader")
            if loader is None and len(node.args) > 1:
                loader = node.args[1]
            if loader is None or _dotted(loader).rsplit(".", 1)[-1] in UNSAFE_YAML_LOADERS:
                found.append(f"{where}:{node.lineno}: {func} without a safe Loader")
    return found


def test_the_scanner_finds_what_it_looks_for() -> None:
    bad = """
import pickle
from joblib import load
import numpy as np, torch, yaml, pandas as pd
torch.load("m.pt")
torch.load("m.pt", weights_only=False)
np.load("x.npz", allow_pickle=True)
pd.read_pickle("x.pkl")
yaml.load(text, Loader=yaml.Loader)
yaml.load(text)
"""
    good = """
import numpy as np, torch, yaml
torch.load("m.pt", map_location="cpu", weights_only=True)
np.load("x.npz", allow_pickle=False)
np.load("x.npy")
yaml.load(text, Loader=yaml.SafeLoader)
yaml.safe_load(text)
"""
    assert len(pickle_findings(bad, "bad.py")) == 8
    assert pickle_findings(good, "good.py") == []


def test_no_pickle_anywhere(reliability_report: Any) -> None:
    files = python_files()
    assert len(files) > 50  # the scan sees the repository
    findings = [f for path in files for f in pickle_findings(path.read_text(), str(path))]
    assert findings == [], "\n".join(findings)
    reliability_report.tried(
        SECTION,
        "pickle scan of the repository's Python",
        f"{len(files)} files: no pickle/joblib, torch.load(weights_only=True) only",
    )


# --- grants, resource by resource -------------------------------------------------------------

A = "<ArtifactBucket.Arn>"
D = "<DataBucket.Arn>"
T = "<RegistryTable.Arn>"
JOBS = "arn:aws:sagemaker:eu-west-1:111122223333:training-job/maas-*"
EXPECTED: dict[str, set[tuple[str, str]]] = {
    "IngestFunction": {
        ("dynamodb:GetItem", T),
        ("dynamodb:PutItem", T),
        ("dynamodb:UpdateItem", T),
        ("sqs:SendMessage", "<IngestDLQ.Arn>"),
        ("s3:GetObject", f"{D}/datasets/*"),
        ("s3:GetObject", f"{D}/pretrained/*"),
        ("s3:GetObjectVersion", f"{D}/datasets/*"),
        ("s3:GetObjectVersion", f"{D}/pretrained/*"),
        ("s3:ListBucket", D),
        ("sagemaker:CreateTrainingJob", JOBS),
        ("sagemaker:AddTags", JOBS),
        ("iam:PassRole", "<TrainingRole.Arn>"),
    },
    "OptimizeFunction": {
        ("dynamodb:GetItem", T),
        ("dynamodb:PutItem", T),
        ("dynamodb:UpdateItem", T),
        ("s3:GetObject", f"{A}/training-output/*"),
        ("s3:PutObject", f"{A}/models/*"),
        ("s3:AbortMultipartUpload", f"{A}/models/*"),
        ("s3:ListBucket", A),
    },
    "InferenceFunction": {
        ("s3:GetObject", f"{A}/models/*"),
        ("s3:ListBucket", A),
        ("dynamodb:GetItem", T),
        ("dynamodb:Query", T),
        ("dynamodb:Scan", T),
    },
    "AdminFunction": {
        ("dynamodb:GetItem", T),
        ("dynamodb:Query", T),
        ("dynamodb:Scan", T),
        ("dynamodb:PutItem", T),
    },
}


def _grants(template: dict[str, Any]) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for owner, statement in policy_statements(template):
        if statement.get("Effect") != "Allow":
            continue
        for action in as_list(statement["Action"]):
            for resource in as_list(statement["Resource"]):
                out.setdefault(owner, set()).add((action, evaluate(template, resource, {})))
    return out


def test_each_function_is_granted_exactly_its_own_resources(reliability_report: Any) -> None:
    template = load_template()
    grants = _grants(template)
    for function, expected in EXPECTED.items():
        assert grants[function] == expected, (
            f"{function}: extra {sorted(grants[function] - expected)}, "
            f"missing {sorted(expected - grants[function])}"
        )
        props = template["Resources"][function]["Properties"]
        # No SAM policy templates (DynamoDBCrudPolicy and the like grant more than is used)
        assert all(isinstance(p, dict) and "Statement" in p for p in props["Policies"])
    reliability_report.tried(
        SECTION,
        "IAM grants, resource by resource",
        "only its buckets, prefixes, table, queue; one SageMaker action",
    )


def test_list_bucket_is_limited_to_the_functions_prefixes() -> None:
    template = load_template()
    for owner, statement in policy_statements(template):
        if "s3:ListBucket" in as_list(statement["Action"]):
            prefixes = statement["Condition"]["StringLike"]["s3:prefix"]
            assert all(p.endswith("/*") for p in as_list(prefixes)), owner


def test_tag_on_create_is_the_only_tagging_ingest_may_do() -> None:
    template = load_template()
    (statement,) = [
        s
        for owner, s in policy_statements(template)
        if owner == "IngestFunction" and "sagemaker:AddTags" in as_list(s["Action"])
    ]
    assert as_list(statement["Action"]) == ["sagemaker:AddTags"]
    assert statement["Condition"] == {"Null": {"sagemaker:TaggingAction": "false"}}


# --- checkov ------------------------------------------------------------------------------


def test_checkov_finds_nothing_left_unexplained(reliability_report: Any) -> None:
    if not CHECKOV.exists():
        pytest.skip(f"checkov is not installed at {CHECKOV}: `make checkov` installs it")
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    result = subprocess.run(
        [
            str(CHECKOV),
            "--file",
            str(TEMPLATE),
            "--framework",
            "cloudformation",
            "--skip-download",  # no network: checks and suppressions are the local ones
            "--compact",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    doc = json.loads(result.stdout)
    report = doc[0] if isinstance(doc, list) else doc
    summary = report["summary"]
    failed = report["results"].get("failed_checks", [])
    skipped = report["results"].get("skipped_checks", [])
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 20, summary
    assert not failed, "\n".join(
        f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in failed
    )
    unexplained = [
        f"{c['check_id']} {c['resource']}"
        for c in skipped
        if len((c.get("check_result") or {}).get("suppress_comment") or "") < 30
    ]
    assert not unexplained, f"skipped without a reason: {unexplained}"
    reliability_report.tried(
        SECTION,
        "checkov on template.yaml",
        f"{summary['passed']} passed, 0 failed, {summary['skipped']} skipped each with its "
        "reason in the resource's Metadata",
    )


# --- names before S3 keys -----------------------------------------------------------------


@pytest.mark.parametrize(
    "model, version", [("../iris", 1), ("iris/../x", 1), ("Iris", 1), ("", 1), ("iris", 0)]
)
def test_artifact_keys_refuse_names_that_are_not_names(model: str, version: int) -> None:
    from maas.core.artifacts import model_prefix
    from maas.core.names import InvalidName

    with pytest.raises(InvalidName):
        model_prefix(model, version)
    assert model_prefix("iris", 3) == "models/iris/3/"
