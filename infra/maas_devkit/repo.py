"""Where the stack's sources are, and the account, region and names every stand-in AWS uses."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
FUNCTIONS_DIR = REPO / "functions"
EVENTS_DIR = REPO / "events"
TRAINING_ENTRY = REPO / "training" / "train.py"

REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK_NAME = "maas"
