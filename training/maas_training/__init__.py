"""The MaaS training job: SageMaker-contract entry point for tabular and text classification,
and for importing pretrained (Hugging Face) text models.

Runs inside the training container (torch present) and never imports the `maas` Lambda
package: the files it shares with it (maas/core/contract.py, maas/serving/textprep.py) come
through maas_training.shared. `train.py` next to this package is what SageMaker script mode
executes; main -> recipes (what differs per model family) -> steps (what every recipe runs).
"""

from __future__ import annotations

__all__ = ["TrainingError"]

from maas_training.errors import TrainingError
