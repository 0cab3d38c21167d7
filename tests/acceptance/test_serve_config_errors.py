"""Issue 17 part 7: `herald serve` (and `herald api`) say a configuration error in one line.

The same file gives the same one clear line and a non-zero exit from ``serve``, ``api``,
``worker`` and ``send``: an unknown provider name in a channel, a provider table without a
required key, a provider value of the wrong type. No traceback, nothing listening.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.process import herald_cli

CASES = [
    (
        '[channels.email]\nproviders = ["nosuch"]\n',
        "channels.email.providers: unknown provider 'nosuch'",
    ),
    (
        '[providers.sendgrid]\nfrom_email = "noreply@example.com"\n'
        '[channels.email]\nproviders = ["sendgrid"]\n',
        "providers.sendgrid.api_key",
    ),
    (
        '[providers.twilio]\naccount_sid = "AC123"\n\n[channels.sms]\nproviders = ["twilio"]\n',
        "providers.twilio",
    ),
    (
        '[providers.smtp]\nport = "twenty-five"\n',
        "providers.smtp.port",
    ),
]

COMMANDS = [
    ["serve", "--port", "0"],
    ["api", "--port", "0"],
    ["worker"],
    ["send", "--to", "u1", "--content", '{"text": "x"}', "--channels", "email"],
]


@pytest.mark.parametrize(("toml", "names"), CASES)
def test_a_configuration_error_is_one_line_from_every_command(tmp_path: Path, toml: str, names: str) -> None:
    (tmp_path / "herald.toml").write_text(toml)
    answers = {}
    for args in COMMANDS:
        done = herald_cli(tmp_path, *args, timeout=60)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode not in (0, None), (args, done.stderr)
        assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, (args, done.stderr)
        assert len(lines) == 1, (args, done.stderr)
        assert lines[0].startswith("error: ") and names in lines[0], (args, lines)
        answers[args[0]] = lines[0]
    # serve says what worker says.
    assert answers["serve"] == answers["api"] == answers["worker"], answers
