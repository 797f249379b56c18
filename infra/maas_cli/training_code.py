"""The training code tarball SageMaker script mode runs (`maas push-training-code`)."""

from __future__ import annotations

from pathlib import Path


def pack_training_code(dest: Path) -> Path:
    """training/ as the tarball SageMaker script mode unpacks (train.py at its root)."""
    import tarfile

    repo = Path(__file__).resolve().parents[2]
    root = repo / "training"
    with tarfile.open(dest, "w:gz") as tar:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and "__pycache__" not in rel.parts and rel.suffix != ".pyc":
                tar.add(path, arcname=str(rel))
        # The text encoders the inference function runs, byte for byte (maas_training.textprep).
        tar.add(
            repo / "layers" / "shared" / "maas" / "serving" / "textprep.py",
            arcname="maas_training/_shared/textprep.py",
        )
    return dest
