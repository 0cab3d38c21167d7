"""The README's quick start, pasted as a new user would: the blocks marked ``readme-test`` run as
one shell script in a fresh clone of the committed repository (HEAD), so the README cannot drift
from what works.

Installing into the clone's ``.venv`` is what ``scripts/serve`` does on a first run (a minute or
more); to keep the suite fast the test seeds that ``.venv`` with the packages of the running one
(a path file, herald itself from the clone's ``src``) and marks it installed, so the pasted block
runs unchanged on top. ``HERALD_README_TEST_INSTALL=1`` skips the seeding: the block then
installs for real from ``constraints.txt``, as on a user's machine.
"""

from __future__ import annotations

import os
import re
import signal
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.net import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- readme-test[^>]*-->\s*```sh\n(.*?)```", re.S)


def readme_script(readme: str, port: int) -> str:
    blocks = BLOCK.findall(readme)
    assert len(blocks) >= 2, "the README lost its readme-test blocks"
    body = "\n".join(blocks)
    assert "localhost:8025" in body
    return "set -euo pipefail\n" + body.replace("localhost:8025", f"localhost:{port}")


def seed_venv(clone: Path) -> None:
    """A .venv in the clone that uses the running interpreter's packages and the clone's code."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(clone / ".venv")], check=True, timeout=120)
    found = list((clone / ".venv" / "lib").glob("python3*/site-packages"))
    assert len(found) == 1
    paths = [str(clone / "src"), *site.getsitepackages()]
    (found[0] / "000-herald-readme-test.pth").write_text("\n".join(paths) + "\n")
    script = clone / ".venv" / "bin" / "herald"
    script.write_text(
        f"#!{clone / '.venv' / 'bin' / 'python'}\nimport sys\nfrom herald.entrypoints.cli import main\n"
        "sys.exit(main())\n"
    )
    script.chmod(0o755)
    stamp = clone / ".venv" / ".herald-installed"
    stamp.touch()
    later = time.time() + 60  # newer than pyproject.toml and constraints.txt: installed
    os.utime(stamp, (later, later))


def test_the_quick_start_works_pasted_into_a_fresh_clone(tmp_path: Path) -> None:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    clone = tmp_path / "herald"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    subprocess.run(["git", "checkout", "-q", head], cwd=clone, check=True, timeout=60)
    if os.environ.get("HERALD_README_TEST_INSTALL") != "1":
        seed_venv(clone)
    port = free_port()
    script = readme_script((clone / "README.md").read_text(encoding="utf-8"), port)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERALD_", "VIRTUAL_ENV"))}
    env["HERALD_SERVER__PORT"] = str(port)  # the README's 8025 may be taken on a test machine
    env["PYTHON"] = getattr(sys, "_base_executable", sys.executable)
    # Files, not pipes: the backgrounded herald keeps them open after the script ends.
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out_path.open("w") as stdout, err_path.open("w") as stderr:
        proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=clone,
            stdout=stdout,
            stderr=stderr,
            env=env,
            start_new_session=True,  # the backgrounded herald is in this group: stopped with it
        )
    console = clone / "herald-console.jsonl"
    try:
        proc.wait(timeout=600)
        out, err = out_path.read_text(), err_path.read_text()
        assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
        assert f"herald listening on http://127.0.0.1:{port}" in out
        assert '"unread_count":' in out and '"title":"Welcome"' in out  # the inbox: the in-app item
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            sent = console.read_text(encoding="utf-8") if console.exists() else ""
            # the French subject (the user's locale), the event's fallback to email, the topic send
            if all(x in sent for x in ("Bienvenue, Ana", "Order 42 shipped", "To every subscriber")):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"not every delivery reached the console provider: {sent[-2000:]}")
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the script and the herald it left running (same process group)."""
    for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.poll()
                return
            proc.poll()  # reap the script itself
            time.sleep(0.1)
