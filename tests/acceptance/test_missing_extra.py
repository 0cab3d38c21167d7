"""A provider configured without its extra stops herald at start with one line naming the extra
(the SDK's absence is simulated: ``sys.modules[name] = None`` makes its import fail)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN_WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # import fails as if the package were not installed
sys.argv = ["herald", *sys.argv[2:]]
from herald.entrypoints.cli import main
main()
"""


@pytest.mark.parametrize(
    ("provider", "channel", "missing", "extra"),
    [
        ("ses", "email", "botocore", "ses"),
        ("chat", "chat", "apprise", "chat"),
        ("apns", "push", "h2", "apns"),
        ("apns", "push", "httpx", "apns"),
    ],
)
def test_a_provider_without_its_extra_fails_at_start_in_one_line(
    tmp_path: Path, provider: str, channel: str, missing: str, extra: str
) -> None:
    (tmp_path / "herald.toml").write_text(
        f'[channels.{channel}]\nproviders = ["{provider}"]\n[providers.{provider}]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    for command in (["serve", "--port", "0"], ["config", "check"]):
        done = subprocess.run(
            [sys.executable, "-c", RUN_WITHOUT, missing, *command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: providers.{provider} needs the '{extra}' extra ({missing} is not installed): "
            f"pip install 'herald[{extra}]'"
        ], done.stderr
        assert "Traceback" not in done.stderr
        assert "herald listening" not in done.stdout
