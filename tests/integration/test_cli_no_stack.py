"""Every `maas` command with no stack to talk to: one line saying what to do, a non-zero exit.

No local stack on 127.0.0.1:4566, no AWS_ENDPOINT_URL, no region, no credentials (an empty
HOME: no ~/.aws either) -- what a new user's first command meets.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from maas_cli.connect import DEFAULT_LOCAL, port_open

MAAS = Path(sys.executable).with_name("maas")
COMMANDS = [
    ["models"],
    ["versions", "iris"],
    ["wait", "iris", "--timeout", "5"],
    ["upload", "{data}", "--model", "iris"],
    ["promote", "iris", "2"],
    ["canary", "iris", "2", "--weight", "0.1"],
    ["rollback", "iris"],
    ["audit", "iris"],
    ["push-training-code"],
    ["local", "status", "--workdir", "{work}"],
    ["local", "logs", "--workdir", "{work}"],
]


@pytest.mark.skipif(port_open(*DEFAULT_LOCAL), reason="a local stack answers on 4566 here")
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_command_with_no_stack_says_what_to_do_in_one_line(
    command: list[str], tmp_path: Path
) -> None:
    # GIVEN nothing to talk to, and a data file for the upload
    data = tmp_path / "iris.csv"
    data.write_text("a,label\n1,x\n")
    argv = [a.format(data=data, work=tmp_path / "nowhere") for a in command]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home")}

    # WHEN the command runs
    done = subprocess.run([str(MAAS), *argv], capture_output=True, text=True, env=env, timeout=120)

    # THEN it fails with one line that names the way forward, and no traceback
    out = (done.stdout + done.stderr).strip()
    assert done.returncode != 0, out
    assert "Traceback" not in out
    assert len(out.splitlines()) == 1, out
    assert "maas local up" in out, out
