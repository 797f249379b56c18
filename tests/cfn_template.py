"""Read template.yaml (CloudFormation / SAM) into plain dicts, short-form tags in long form.

A plain module next to conftest.py (which puts tests/ on sys.path): `from cfn_template import
load_template`. `!Ref X` becomes {"Ref": "X"}, `!GetAtt A.B` {"Fn::GetAtt": ["A", "B"]}, `!Sub s`
{"Fn::Sub": "s"}, `!Condition c` {"Condition": "c"}, and every other `!Name v` {"Fn::Name": v},
so tests see exactly what CloudFormation sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "template.yaml"

_BASE: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CfnLoader(_BASE):  # type: ignore[misc, valid-type]
    """SafeLoader that also knows CloudFormation's short-form intrinsic function tags."""


def _construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _construct)


def load_template(path: Path | str = TEMPLATE) -> dict[str, Any]:
    """The template as a dict (keys in file order)."""
    doc = yaml.load(Path(path).read_text(), Loader=CfnLoader)
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    return doc


def resources_of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        name: r
        for name, r in template.get("Resources", {}).items()
        if r.get("Type") == resource_type
    }


def function_environment(template: dict[str, Any], function: str) -> dict[str, Any]:
    """A function's environment variables after SAM merges Globals into it."""
    merged: dict[str, Any] = dict(
        template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    )
    props = template["Resources"][function].get("Properties", {})
    merged.update(props.get("Environment", {}).get("Variables", {}))
    return merged


def function_property(template: dict[str, Any], function: str, name: str) -> Any:
    """A function property, falling back to Globals.Function as SAM does."""
    props = template["Resources"][function].get("Properties", {})
    if name in props:
        return props[name]
    return template.get("Globals", {}).get("Function", {}).get(name)


def policy_statements(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(owner logical id, statement) for every identity-policy statement the template writes.

    Covers AWS::IAM::Role inline policies, AWS::IAM::Policy / ManagedPolicy documents and SAM
    functions' inline policy documents (SAM policy templates such as DynamoDBCrudPolicy are
    AWS-maintained and not expanded here).
    """
    for name, res in template.get("Resources", {}).items():
        props = res.get("Properties", {}) or {}
        kind = res.get("Type")
        docs: list[Any] = []
        if kind == "AWS::IAM::Role":
            docs = [p.get("PolicyDocument") for p in props.get("Policies", [])]
        elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            docs = [props.get("PolicyDocument")]
        elif kind == "AWS::Serverless::Function":
            policies = props.get("Policies", [])
            if isinstance(policies, dict):
                policies = [policies]
            docs = [p for p in policies if isinstance(p, dict) and "Statement" in p]
        for doc in docs:
            statements = (doc or {}).get("Statement", [])
            if isinstance(statements, dict):
                statements = [statements]
            for statement in statements:
                yield name, statement


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
