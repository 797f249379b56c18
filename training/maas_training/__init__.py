"""The MaaS training job: SageMaker-contract entry point for tabular and text classification,
and for importing pretrained (Hugging Face) text models.

Runs inside the training container (torch present) and never imports the `maas` Lambda
package. `train.py` next to this package is what SageMaker script mode executes.
"""

from __future__ import annotations

__all__ = ["TrainingError"]

from maas_training.errors import TrainingError
