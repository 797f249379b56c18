from __future__ import annotations


class TrainingError(Exception):
    """A problem the user can fix (bad data, bad hyperparameter); str() is the failure reason."""
