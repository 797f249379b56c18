"""template.yaml as CloudFormation reads it: cfn-lint's decoder (short-form tags in long form).

`!Ref X` becomes {"Ref": "X"}, `!GetAtt A.B` {"Fn::GetAtt": ["A", "B"]}, `!Sub s` {"Fn::Sub":
"s"}: the local stack, the tests and the bench read the same dicts CloudFormation sees.
"""

from __future__ import annotations

import re
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


def evaluate(tpl: dict[str, Any], value: Any, params: dict[str, str]) -> Any:
    """`value` with the intrinsics the template uses resolved: parameters (defaults, then
    `params`), pseudo parameters, Sub, If, Equals, Split, Select; a resource's Ref or GetAtt
    becomes "<Name>" (its value is only known once deployed)."""
    pseudo = {
        "AWS::Region": "eu-west-1",
        "AWS::AccountId": "111122223333",
        "AWS::Partition": "aws",
        "AWS::URLSuffix": "amazonaws.com",
        "AWS::StackName": "maas",
    }
    values = {k: str(v.get("Default", "")) for k, v in tpl["Parameters"].items()}
    values |= params
    values |= pseudo

    def cond(name: str) -> bool:
        return bool(ev(tpl["Conditions"][name]))

    def sub(text: str, extra: dict[str, Any]) -> str:
        def repl(m: re.Match[str]) -> str:
            key = m.group(1)
            if key in extra:
                return str(extra[key])
            if key in values:
                return values[key]
            return f"<{key}>"  # a resource or attribute: its value is not known here

        return re.sub(r"\$\{([^}]+)\}", repl, text)

    def ev(v: Any) -> Any:
        if isinstance(v, list):
            return [ev(x) for x in v]
        if not isinstance(v, dict):
            return v
        if len(v) != 1:  # a mapping, not an intrinsic: its values resolved
            return {k: ev(x) for k, x in v.items()}
        ((fn, arg),) = v.items()
        if fn == "Ref":
            return values.get(arg, f"<{arg}>")
        if fn == "Fn::Sub":
            if isinstance(arg, str):
                return sub(arg, {})
            return sub(arg[0], {k: ev(x) for k, x in arg[1].items()})
        if fn == "Fn::If":
            return ev(arg[1]) if cond(arg[0]) else ev(arg[2])
        if fn == "Fn::Equals":
            return ev(arg[0]) == ev(arg[1])
        if fn == "Fn::Split":
            return str(ev(arg[1])).split(arg[0])
        if fn == "Fn::Select":
            return ev(arg[1])[int(arg[0])]
        if fn == "Fn::GetAtt":
            return f"<{arg[0]}.{arg[1]}>"
        return v if fn.startswith("Fn::") else {fn: ev(arg)}

    return ev(value)
