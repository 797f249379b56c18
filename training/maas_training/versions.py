"""The job runs on the versions the test suite runs, or says why it does not.

training/requirements.txt pins them (SageMaker script mode pip-installs it from the code dir
before it runs train.py; training/Dockerfile bakes the same file in). The exporters (dynamo and
TorchScript), onnxscript and onnxruntime change a great deal between releases, so a job on any
other version of these fails at start, naming what differs, rather than export a graph no test
has seen.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from maas_training.errors import TrainingError

CHECKED = ("torch", "onnx", "onnxscript", "onnxruntime")
REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"


def pins(path: Path | None = None) -> dict[str, str]:
    """name -> version of every `name==version` line (comments and markers dropped)."""
    path = path or REQUIREMENTS
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        requirement = line.split("#", 1)[0].split(";", 1)[0].strip()
        name, sep, version = requirement.partition("==")
        if sep:
            found[name.split("[", 1)[0].strip().lower()] = version.strip()
    return found


def installed(name: str) -> str | None:
    """The installed release, without a local label (torch's "+cpu", "+cu128")."""
    try:
        return metadata.version(name).split("+", 1)[0]
    except metadata.PackageNotFoundError:
        return None


def check_environment(path: Path | None = None) -> None:
    path = path or REQUIREMENTS
    if not path.is_file():
        raise TrainingError(f"{path.name} is missing beside train.py: the pins the job checks")
    wanted = pins(path)
    wrong = []
    for name in CHECKED:
        want, have = wanted.get(name), installed(name)
        if want is None:
            wrong.append(f"{name} is not pinned (==) in {path.name}")
        elif have != want:
            wrong.append(f"{name} {have or 'is missing'}, pinned {want}")
    if wrong:
        raise TrainingError(
            "the training environment is not the tested one: "
            + "; ".join(wrong)
            + f" ({path.name} is what script mode installs and training/Dockerfile bakes in)"
        )
