"""``herald users import FILE``: users in bulk from JSON lines or CSV, straight into the database.

JSON lines: one user object per line, as in ``POST /v1/users/batch`` (``id``, the fields of
``PUT /v1/users/{id}``, and optionally ``devices``, ``preferences``, ``topics``). CSV: a header
row naming the columns ``id``, ``email``, ``phone``, ``locale``, ``timezone``, ``webhook_url``,
``data`` / ``chat`` / ``devices`` / ``preferences`` (JSON), ``topics`` (keys separated by spaces
or commas) and ``data.NAME`` (one attribute each); an empty cell is an absent field.

Batches are written one transaction each, with a checkpoint (the file's size, modification
time and the byte offset reached) in the same transaction: an interrupted import run again
resumes after the last committed batch. Rows that fail their checks are reported by line
number and skipped; the exit status is 1 when there were any.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

import typer

from herald.entrypoints.cli_common import ConfigOpt, fail, guarded, load

if TYPE_CHECKING:
    from herald.entrypoints.service_layer import AdminServices
    from herald.services.directory import Directory
    from herald.services.user_import import BatchOutcome, CheckedBatch

users_app = typer.Typer(no_args_is_help=True, help="Users (recipients)")

_CSV_FIELDS = ("id", "email", "phone", "locale", "timezone", "webhook_url")
_CSV_JSON = ("data", "chat", "devices", "preferences")
_SHOWN_ERRORS = 100  # bad rows printed one by one; the rest are counted


class _Bad(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


def _jsonl_rows(f: BinaryIO, line: int) -> Iterator[tuple[int, int, Any]]:
    """(line number, byte offset after the line, object or _Bad) for each non-blank line."""
    import orjson  # noqa: PLC0415

    offset = f.tell()
    for raw in f:
        line += 1
        offset += len(raw)
        if not raw.strip():
            continue
        try:
            yield line, offset, orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield line, offset, _Bad(f"not valid JSON: {exc}")


def _csv_converter(header: list[str]) -> Any:
    unknown = [
        h
        for h in header
        if h not in _CSV_FIELDS and h not in _CSV_JSON and h != "topics" and not h.startswith("data.")
    ]
    if unknown or "id" not in header:
        why = f"unknown columns {unknown}" if unknown else "no id column"
        raise fail(
            f"CSV header: {why}; columns are {', '.join(_CSV_FIELDS + _CSV_JSON)}, topics and data.NAME"
        )

    def convert(cells: list[str]) -> Any:
        if len(cells) != len(header):
            return _Bad(f"{len(cells)} cells for {len(header)} columns")
        obj: dict[str, Any] = {}
        for name, cell in zip(header, cells, strict=True):
            if cell == "":
                continue
            if name in _CSV_JSON:
                try:
                    obj[name] = json.loads(cell)
                except json.JSONDecodeError as exc:
                    return _Bad(f"{name}: not valid JSON: {exc.msg}")
            elif name == "topics":
                obj["topics"] = [k for k in cell.replace(",", " ").split() if k]
            elif name.startswith("data."):
                data = obj.setdefault("data", {})
                if not isinstance(data, dict):
                    return _Bad("data: both a data column and data.NAME columns")
                data[name[5:]] = cell
            else:
                obj[name] = cell
        return obj

    return convert


def _csv_rows(f: BinaryIO, header: list[str], line: int) -> Iterator[tuple[int, int, Any]]:
    """Rows as (first line number, byte offset after the row, object or _Bad). A quoted cell
    may span lines; the offset is exact because rows are read line by line."""
    import csv  # noqa: PLC0415

    convert = _csv_converter(header)
    offset = f.tell()
    pending: list[str] = []
    start = line
    for raw in f:
        line += 1
        offset += len(raw)
        if not pending:
            start = line
        pending.append(raw.decode("utf-8-sig" if line == 1 else "utf-8", errors="replace"))
        text = "".join(pending)
        if text.count('"') % 2:  # inside a quoted cell: the row goes on
            continue
        pending = []
        if not text.strip():
            continue
        try:
            cells = next(csv.reader([text]))
        except csv.Error as exc:
            yield start, offset, _Bad(f"not valid CSV: {exc}")
            continue
        yield start, offset, convert(cells)
    if pending:
        yield start, offset, _Bad("a quoted cell is not closed before the end of the file")


def _detect_format(path: Path, given: str | None) -> str:
    if given:
        return given
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "jsonl" if head.startswith(b"{") else "csv"


def _checkpoint_name(path: Path) -> str:
    import hashlib  # noqa: PLC0415 - OpenSSL's bindings: not for every `herald --help`

    return "users_import:" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]


@users_app.command("import")
@guarded
def users_import(
    file: Annotated[Path, typer.Argument(help="JSON lines (one user object per line) or CSV with a header")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="jsonl or csv (default: from the extension or content)")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=1000, help="users per transaction")] = 1000,
    restart: Annotated[
        bool, typer.Option("--restart", help="ignore an earlier run's checkpoint and start at line 1")
    ] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar (on a terminal)")] = True,
    config: ConfigOpt = None,
) -> None:
    """Import users (with devices, preferences and topic subscriptions) from FILE.

    Resumable: run the same command again after an interruption and it goes on after the last
    committed batch. Bad rows are reported by line number and skipped (exit status 1).
    """
    if fmt not in (None, "jsonl", "csv"):
        raise fail("--format must be jsonl or csv")
    if not file.is_file():
        raise fail(f"{file}: no such file")
    kind = _detect_format(file, fmt)
    settings = load(config, logs=False)  # progress and bad rows are printed, nothing is logged
    from herald.entrypoints.cli_common import with_admin  # noqa: PLC0415

    stat = file.stat()
    name = _checkpoint_name(file)
    ident = {"path": str(file.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    async def main(s: AdminServices) -> int:
        return await _run(s.directory, file, kind, ident, name, batch_size, restart, progress)

    bad = with_admin(settings, main, pool_size=2)
    if bad:
        raise typer.Exit(1)


async def _run(
    directory: Directory,
    file: Path,
    kind: str,
    ident: dict[str, Any],
    name: str,
    batch_size: int,
    restart: bool,
    progress: bool,
) -> int:
    import asyncio  # noqa: PLC0415

    start_offset, start_line, done_before, bad_before = 0, 0, 0, 0
    saved = None if restart else await directory.import_checkpoint(name)
    if saved is not None:
        mark = json.loads(saved)
        same = all(mark.get(k) == v for k, v in ident.items())
        finished = mark["offset"] >= mark["size"]
        if same and finished:
            typer.echo(
                f"{file}: already imported ({mark['imported']} users, {mark['bad']} bad rows); "
                "--restart imports it again",
                err=True,
            )
            return 0
        if not same and not finished:
            raise fail(
                f"{file} changed since its import was interrupted at line {mark['line']}: "
                "--restart imports it from the start"
            )
        if same:
            start_offset, start_line = mark["offset"], mark["line"]
            done_before, bad_before = mark["imported"], mark["bad"]
            typer.echo(
                f"{file}: resuming after line {start_line} ({done_before} users already imported)", err=True
            )
    imported, bad = done_before, bad_before
    began = time.monotonic()
    with file.open("rb") as f:
        header: list[str] = []
        if kind == "csv":
            import csv  # noqa: PLC0415

            first = f.readline()
            header = [h.strip() for h in next(csv.reader([first.decode("utf-8-sig")]), [])]
            if start_offset == 0:
                start_line = 1
        f.seek(max(start_offset, f.tell()))
        rows = _jsonl_rows(f, start_line) if kind == "jsonl" else _csv_rows(f, header, start_line)
        bar = _bar(ident["size"], start_offset if start_offset else f.tell(), progress)
        pending: Any = None  # the previous batch's write, running while this one is checked
        pending_lines: list[int] = []
        pending_reported: set[int] = set()  # items of the pending batch already reported bad
        known_topics: set[str] = set()

        def show(error: Any) -> str:
            where = f"{error.field}: " if error.field and error.field not in error.detail else ""
            return f"{where}{error.detail}"

        def report(outcome: BatchOutcome, lines: list[int], reported: set[int]) -> None:
            """After the write: what it refused besides the checks (a topic that does not exist)."""
            nonlocal imported, bad
            imported += outcome.imported
            for r in outcome.results:
                if r.error is not None and r.index not in reported:
                    _bad_row(bad, lines[r.index], show(r.error))
                    bad += 1

        async def flush(batch: list[Any], lines: list[int], line: int, offset: int) -> None:
            nonlocal pending, pending_lines, pending_reported, bad
            objs = []
            kept_lines = []
            unreadable = []
            for ln, obj in zip(lines, batch, strict=True):
                if isinstance(obj, _Bad):
                    unreadable.append((ln, obj.detail))
                else:
                    objs.append(obj)
                    kept_lines.append(ln)
            now = time.time()
            checked: CheckedBatch = directory.check_batch(objs, now)
            if pending is not None:
                report(await pending, pending_lines, pending_reported)
            # The counts of the previous batches, now reported, plus this batch's unreadable rows
            # (the write adds the users it writes and the items it refuses).
            done, refused = imported, bad + len(unreadable)
            checks = [(kept_lines[r.index], show(r.error)) for r in checked.results if r.error is not None]
            for ln, detail in sorted(unreadable + checks):
                _bad_row(bad, ln, detail)
                bad += 1

            def value(written: int, failed: int, line: int = line, offset: int = offset) -> str:
                return json.dumps(
                    {
                        **ident,
                        "offset": offset,
                        "line": line,
                        "imported": done + written,
                        "bad": refused + failed,
                    }
                )

            pending = asyncio.ensure_future(
                directory.write_batch(checked, now, checkpoint=(name, value), known_topics=known_topics)
            )
            pending_lines = kept_lines
            pending_reported = {r.index for r in checked.results if r.error is not None}

        batch: list[Any] = []
        lines: list[int] = []
        line, offset = start_line, f.tell()
        for line, offset, obj in rows:
            batch.append(obj)
            lines.append(line)
            if len(batch) >= batch_size:
                await flush(batch, lines, line, offset)
                bar.update(offset - bar.pos)
                batch, lines = [], []
        await flush(batch, lines, line, ident["size"])  # the rest, and the mark of a finished file
        if pending is not None:
            report(await pending, pending_lines, pending_reported)
        bar.update(ident["size"] - bar.pos)
        bar.finish()
    seconds = time.monotonic() - began
    summary = f"imported {imported} users from {file} in {seconds:.1f} s"
    if bad:
        summary += f"; {bad} bad rows skipped (reported above by line number)"
    typer.echo(summary)
    return bad - bad_before


def _bad_row(count: int, line: int, detail: str) -> None:
    if count < _SHOWN_ERRORS:
        typer.echo(f"line {line}: {detail}", err=True)
    elif count == _SHOWN_ERRORS:
        typer.echo("… more bad rows: only the first 100 are shown", err=True)


class _Bar:
    """A progress bar on stderr (a terminal only): bytes of the file, with a rate and an ETA."""

    def __init__(self, total: int, start: int, shown: bool) -> None:
        self.total = max(total, 1)
        self.pos = start
        self.shown = shown
        self.began = time.monotonic()
        self.start = start
        self.last = 0.0

    def update(self, step: int) -> None:
        self.pos += step
        now = time.monotonic()
        if self.shown and (now - self.last >= 0.2 or self.pos >= self.total):
            self.last = now
            done = self.pos / self.total
            rate = (self.pos - self.start) / max(now - self.began, 1e-6)
            left = (self.total - self.pos) / rate if rate > 0 else 0.0
            filled = int(done * 30)
            sys.stderr.write(
                f"\rimporting [{'#' * filled}{'.' * (30 - filled)}] {done:6.1%}  eta {left:5.0f} s"
            )
            sys.stderr.flush()

    def finish(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _bar(total: int, start: int, progress: bool) -> _Bar:
    return _Bar(total, start, progress and sys.stderr.isatty())
