"""SageMaker script-mode entry point (also what the local runner executes).

SageMaker copies training/ (the source_dir) to /opt/ml/code and runs `python train.py`;
channels and output paths come from the SM_* contract (maas_training.config), hyperparameters
from input/config/hyperparameters.json (maas_training.hyperparameters).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from maas_training.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(script=Path(__file__).resolve()))
