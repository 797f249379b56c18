"""The training environment on AWS is the tested one: image, requirements, extras and the suite.

SageMaker script mode pip-installs training/requirements.txt over the template's default image;
training/Dockerfile bakes the same file into the same base. These tests fail when any of them,
pyproject.toml's extras or the versions this suite runs on disagree.
"""

from __future__ import annotations

import os
import re
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
from maas_training.errors import TrainingError
from maas_training.versions import CHECKED, check_environment, installed, pins
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "training" / "requirements.txt"
DLC_TAG = re.compile(r"pytorch-training:(?P<tag>[\w.-]+)")
PY_TAG = re.compile(r"-py(?P<major>\d)(?P<minor>\d+)-")


def _extras() -> dict[str, list[Requirement]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {
        name: [Requirement(r) for r in reqs]
        for name, reqs in project["optional-dependencies"].items()
    }


def _python_of(tag: str) -> tuple[int, int]:
    match = PY_TAG.search(tag)
    assert match, f"no Python version in the image tag {tag}"
    return int(match["major"]), int(match["minor"])


def test_requirements_pin_exactly_what_the_training_extra_pins() -> None:
    lines = [line.split("#", 1)[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    requirements = [Requirement(line) for line in lines if line]
    # every line is an exact pin, and the extra is the same list
    assert all(
        len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in requirements
    )
    assert {r.name: str(r.specifier) for r in _extras()["training"]} == {
        r.name: str(r.specifier) for r in requirements
    }
    assert pins(REQUIREMENTS)["torch"] == "2.13.0"  # the one torch every test runs


def test_every_extra_admits_the_pinned_exporter_stack() -> None:
    pinned = pins(REQUIREMENTS)
    for extra, requirements in _extras().items():
        for r in requirements:
            if r.name in CHECKED:
                assert r.specifier.contains(pinned[r.name]), (extra, str(r))


def test_the_suite_runs_the_pinned_versions() -> None:
    pinned = pins(REQUIREMENTS)
    assert {name: installed(name) for name in CHECKED} == {name: pinned[name] for name in CHECKED}
    check_environment(REQUIREMENTS)  # what the job checks at start passes here


def test_template_default_image_runs_the_python_the_suite_runs() -> None:
    template = (REPO / "template.yaml").read_text()
    tags = set(DLC_TAG.findall(template))
    # one default image wherever the template spells it (job request, ECR permissions, docs)
    assert len(tags) == 1, tags
    [tag] = tags
    assert _python_of(tag) == sys.version_info[:2]
    dockerfile = (REPO / "training" / "Dockerfile").read_text()
    match = re.search(r"^ARG DLC_TAG=(\S+)$", dockerfile, re.M)
    assert match and match[1] == tag  # the bring-your-own-container image: the same base
    assert "pip install --no-cache-dir -r /opt/ml/code/requirements.txt" in dockerfile


def test_code_tarball_is_what_script_mode_installs_and_runs(tmp_path: Path) -> None:
    """The toolkit pip-installs requirements.txt from the code dir's root before it runs the
    entry point, unless a setup.py there makes the tarball a package to install instead."""
    from maas_cli.training_code import pack_training_code

    with tarfile.open(pack_training_code(tmp_path / "training.tar.gz")) as tar:
        names = set(tar.getnames())
        member = tar.extractfile("requirements.txt")
        assert member is not None and member.read() == REQUIREMENTS.read_bytes()
    assert "train.py" in names
    assert "setup.py" not in names


def test_job_on_other_versions_fails_at_start_naming_them(tmp_path: Path) -> None:
    wrong = tmp_path / "requirements.txt"
    wrong.write_text(REQUIREMENTS.read_text().replace("torch==2.13.0", "torch==2.5.1"))
    with pytest.raises(TrainingError, match=r"not the tested one: torch 2\.13\.0, pinned 2\.5\.1"):
        check_environment(wrong)
    with pytest.raises(TrainingError, match=r"requirements\.txt is missing"):
        check_environment(tmp_path / "elsewhere" / "requirements.txt")


def test_job_writes_the_version_failure_as_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maas_training import main, versions

    # GIVEN a job whose pins this environment does not have
    wrong = tmp_path / "requirements.txt"
    wrong.write_text(REQUIREMENTS.read_text().replace("onnx==", "onnx==0.0.1 #"))
    monkeypatch.setattr(versions, "REQUIREMENTS", wrong)
    for name in [k for k in os.environ if k.startswith(("SM_", "MAAS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MAAS_OPT_ML", str(tmp_path / "opt"))
    # WHEN it starts
    rc = main.main()
    # THEN it stops before training, with the reason SageMaker shows
    assert rc == 1
    reason = (tmp_path / "opt" / "output" / "failure").read_text()
    assert "not the tested one" in reason and "onnx" in reason and "pinned 0.0.1" in reason
