"""Files of an evaluation run that must survive a kill -9: results.jsonl appended line by line,
other files replaced atomically, and a file-name mapping for sample ids.

Each result line is one `os.write` of the whole line (newline last) on an O_APPEND descriptor,
followed by fsync. A process killed mid-write can leave at most a torn final line (no newline);
`read_results(..., repair=True)` cuts it off so that the sample runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from rsagent.core.errors import RsagentError

RESULTS = "results.jsonl"
_SAFE = re.compile(r"[A-Za-z0-9_.\-]")
_MAX_NAME = 150


class ResultsError(RsagentError):
    """A results file that cannot be read back (a corrupt line other than a torn last one)."""


def safe_name(sample_id: str) -> str:
    """A file name for a sample id: letters, digits, '_', '-', '.' kept; every other character
    (including '%', '/', '+') percent-encoded as UTF-8, so the mapping is one-to-one. A leading '.'
    is encoded too (no hidden files, no '..'); very long ids are cut and suffixed with a hash."""
    out = []
    for index, ch in enumerate(sample_id):
        if _SAFE.fullmatch(ch) and not (index == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    name = "".join(out) or "%00empty"
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(sample_id.encode("utf-8")).hexdigest()[:16]
        name = f"{name[:_MAX_NAME - 17]}~{digest}"
    return name


def dumps_line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")


class ResultsWriter:
    """Appends one JSON line per sample; each line is written whole and synced before returning."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict) -> None:
        data = dumps_line(record)
        view = memoryview(data)
        while view:  # a regular file takes it in one write; loop only for a short write (disk full...)
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_results(path: Path, repair: bool = False) -> list[dict]:
    """All complete records of a results file, in file order.

    A final line without its newline (or one that is not valid JSON and is last) is a write torn
    by a kill: it is ignored, and with `repair` the file is truncated to the last complete line so
    that new lines append cleanly. A bad line anywhere else raises ResultsError with its number.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: b"" when the file ends cleanly
    good_end = len(data) - len(tail)
    records: list[dict] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict) or "sample_id" not in rec:
                raise ValueError("not a result record")
        except ValueError as exc:
            if number == len(lines) and not tail:
                good_end -= len(raw) + 1  # the last line is broken although it ended: treat as torn
                break
            raise ResultsError(f"{path}: line {number} is not a result record ({exc}); "
                               f"fix or remove that line, then --resume") from None
        records.append(rec)
    if repair and good_end != len(data):
        os.truncate(path, good_end)
    return records


def prediction_path(pred_dir: Path, sample_id: str) -> Path:
    """`PRED/<sample_id>.png`; for an id that is not a safe relative path, `PRED/<safe_name(id)>.png`."""
    parts = Path(sample_id).parts
    literal_ok = sample_id and not Path(sample_id).is_absolute() and ".." not in parts
    literal = pred_dir / f"{sample_id}.png"
    if literal_ok and literal.is_file():
        return literal
    safe = pred_dir / f"{safe_name(sample_id)}.png"
    return safe if safe.is_file() or not literal_ok else literal
