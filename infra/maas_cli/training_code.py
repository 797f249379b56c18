"""The training code tarball SageMaker script mode runs (`maas push-training-code`)."""

from __future__ import annotations

from pathlib import Path


def pack_training_code(dest: Path) -> Path:
    """training/ as the tarball SageMaker script mode unpacks into /opt/ml/code: train.py and
    requirements.txt (which it pip-installs first) at its root, and no setup.py (that would
    make it install the tarball as a package instead)."""
    import tarfile

    from maas_training.shared import IN_REPOSITORY, SHARED, VENDORED

    repo = Path(__file__).resolve().parents[2]
    root = repo / "training"
    with tarfile.open(dest, "w:gz") as tar:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and "__pycache__" not in rel.parts and rel.suffix != ".pyc":
                tar.add(path, arcname=str(rel))
        # The files the job shares with the Lambda side, byte for byte, where it looks for them.
        for relative in SHARED.values():
            source = IN_REPOSITORY / relative
            tar.add(source, arcname=f"maas_training/{VENDORED.name}/{source.name}")
    return dest
