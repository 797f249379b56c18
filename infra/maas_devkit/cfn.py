"""template.yaml as CloudFormation reads it: cfn-lint's decoder (short-form tags in long form).

`!Ref X` becomes {"Ref": "X"}, `!GetAtt A.B` {"Fn::GetAtt": ["A", "B"]}, `!Sub s` {"Fn::Sub":
"s"}: the local stack, the tests and the bench read the same dicts CloudFormation sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from maas_devkit.repo import TEMPLATE


def load_template(path: Path | str = TEMPLATE) -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml

    doc = cfn_yaml.load(str(path))
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
