"""The optimizer's import closure, in a fresh interpreter: never torch."""

from __future__ import annotations

import subprocess
import sys


def test_quantize_does_not_import_torch():
    code = "import maas.optimize.quantize, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
