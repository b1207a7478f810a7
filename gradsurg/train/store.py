"""The results store of an ablation grid: ``OUT/results.jsonl``, one run per line.

What it guarantees:

- **One JSON object per line, written whole.** A row is strict JSON (no
  ``NaN``/``Infinity``: a non-finite number is stored as ``null``), written
  with one ``write`` call and forced to disk (``fsync``) before the grid goes
  on. A file that does not end in a newline has a torn last line (a crash
  mid-write): it is set aside before anything is appended, so a new row never
  lands on the torn text.
- **Every line is checked.** A line that is not valid JSON, not an object,
  without a string ``key``, with a ``status`` other than ``ok``/``failed``,
  without a ``config`` object naming ``loss`` and ``seed``, or with a
  non-numeric ``spearman``/``pearson`` is a *problem*: :meth:`ResultsStore.check`
  reports it (file, line, reason) and :meth:`ResultsStore.repair` moves it,
  verbatim with its line number and reason, to ``results.set-aside.jsonl`` and
  rewrites ``results.jsonl`` without it. A training run repairs first, with a
  message; ``--table-only`` and ``--check`` change nothing.
- **A run key appears at most once.** Adding a row whose key is already
  stored (a failed run retried) rewrites the file with the new row in place of
  the old; the rewrite goes through a temporary file and ``os.replace``, so the
  file is always either the old or the new one. A file written by hand or by
  an older version with the same key twice keeps the last row; the earlier one
  is reported and set aside like a problem.
- **One writer per folder, no stale lock.** :meth:`ResultsStore.lock` holds an
  exclusive ``flock`` on ``OUT/.gradsurg.lock`` (which names the holder's pid)
  for the whole grid; a second process on the same folder is refused with a
  message naming the holder (or waits, given ``wait`` seconds). A grid that
  ends, fails or is interrupted (Ctrl-C) removes the file as it releases the
  lock. A killed process (``kill``, ``kill -9``, a crash) cannot remove it, but
  the operating system drops an ``flock`` with its process, so the file it
  leaves holds no lock: the next grid takes it at once, writes its own pid and
  removes it at its end. (A file removed by its holder while another process
  waited on it is noticed: the waiter locks the new file, never the removed one.)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

RESULTS = "results.jsonl"
SET_ASIDE = "results.set-aside.jsonl"
LOCK = ".gradsurg.lock"
STATUSES = ("ok", "failed")
#: the ``config.loss`` of the row that scores the encoder before training (the grid's baseline)
UNTRAINED = "untrained"


class StoreError(Exception):
    """The results folder cannot be used (the message names it and says why)."""


class StoreBusy(StoreError):
    """Another process holds the folder's lock."""


@dataclass
class Problem:
    """A line of ``results.jsonl`` that is not a usable row."""

    line: int
    reason: str
    text: str

    def describe(self, path: str) -> str:
        return f"{path} line {self.line}: {self.reason}"


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (so that it is strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def dumps(row: dict) -> str:
    """One strict-JSON line (no newline) for ``row``."""
    return json.dumps(strict(row), default=str, allow_nan=False, sort_keys=False)


def _row_problem(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return f"not a JSON object (a {type(obj).__name__})"
    if not isinstance(obj.get("key"), str) or not obj["key"]:
        return "no string 'key'"
    if obj.get("status") not in STATUSES:
        return f"'status' is {obj.get('status')!r}, expected one of {', '.join(STATUSES)}"
    cfg = obj.get("config")
    if not isinstance(cfg, dict):
        return "no 'config' object"
    if not isinstance(cfg.get("loss"), str) or not isinstance(cfg.get("seed"), int):
        return "its 'config' lacks a string 'loss' or an integer 'seed'"
    for name in ("spearman", "pearson"):
        if obj.get(name) is not None and (isinstance(obj[name], bool) or not isinstance(obj[name], (int, float))):
            return f"{name!r} is {obj[name]!r}, not a number or null"
    return None


def parse(data: bytes) -> tuple[dict[str, dict], list[Problem], list[Problem]]:
    """Rows by key (file order, the last row of a key wins), problems, and the earlier
    rows of keys stored again later (superseded)."""
    rows: dict[str, dict] = {}
    where: dict[str, tuple[int, str]] = {}
    problems: list[Problem] = []
    superseded: list[Problem] = []
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends in a newline
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        text = raw.decode("utf-8", errors="replace")
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            problems.append(Problem(number, f"not valid JSON ({exc})", text))
            continue
        reason = _row_problem(obj)
        if reason:
            problems.append(Problem(number, reason, text))
            continue
        key = obj["key"]
        if key in rows:
            line, old = where[key]
            superseded.append(Problem(line, f"run key {key} is stored again on line {number} (that row is used)", old))
            del rows[key]  # keep file order of the surviving (later) row
        rows[key] = obj
        where[key] = (number, text)
    if tail.strip():
        problems.append(Problem(len(lines) + 1, "torn last line (no newline at the end: a write was cut short)",
                                tail.decode("utf-8", errors="replace")))
    return rows, problems, superseded


def read_results(path: str, notes: list[str] | None = None) -> list[dict]:
    """The good rows of a results store, in file order, read only (no lock, nothing changed).

    ``path`` is a results folder or a results file (``results.jsonl``, or a copy
    of one under another name). Every line is checked as :func:`parse` does: lines
    that are not usable rows, and earlier rows of a key stored again, are left out
    and described in ``notes`` when a list is given (as ``--check`` describes them).
    A missing file has no rows.
    """
    path = str(path)
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS)
    rows, problems, superseded = parse(_read_bytes(path))
    if notes is not None:
        notes.extend(p.describe(path) for p in sorted(problems + superseded, key=lambda p: p.line))
    return list(rows.values())


def _read_bytes(path: str) -> bytes:
    """The bytes of the results file ``path`` (empty when it does not exist)."""
    if not os.path.exists(path):
        return b""
    if os.path.isdir(path):
        raise StoreError(f"{path!r} is a folder, not a results file")
    with open(path, "rb") as fh:
        return fh.read()


class ResultsStore:
    """The rows of one results folder (see the module docstring for the guarantees).

    ``store = ResultsStore(out)``; ``with store.lock(): store.load(repair=True); store.add(row)``.
    """

    def __init__(self, folder: str):
        self.folder = str(folder)
        self.path = os.path.join(self.folder, RESULTS)
        self.set_aside_path = os.path.join(self.folder, SET_ASIDE)
        self.rows: dict[str, dict] = {}
        self.problems: list[Problem] = []
        self.superseded: list[Problem] = []
        self._lock_fh = None

    # ------------------------------------------------------------- folder
    def prepare(self) -> None:
        """Create the folder, or raise :class:`StoreError` saying why it cannot be used."""
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise StoreError(f"--out {self.folder!r} is a file, not a folder")
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"--out {self.folder!r} cannot be created: {exc.strerror or exc}") from None
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise StoreError(f"--out {self.folder!r} is not writable")

    @contextlib.contextmanager
    def lock(self, wait: float = 0.0) -> Iterator["ResultsStore"]:
        """Hold the folder's exclusive lock (refuse, or wait up to ``wait`` seconds, if it is held);
        the lock file is removed when the lock is released."""
        self.prepare()
        path = os.path.join(self.folder, LOCK)
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                fh = open(path, "a+", encoding="utf-8")
            except OSError as exc:
                raise StoreError(f"--out {self.folder!r}: cannot open the lock file {LOCK}: "
                                 f"{exc.strerror or exc}") from None
            try:
                if _try_lock(fh):
                    if _is_file_at(fh, path):
                        break
                    _unlock(fh)  # its holder removed it on release: lock the file now at ``path``
                    fh.close()
                    continue
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "another process"
                    raise StoreBusy(f"{self.folder!r} is in use by {holder}; wait for it to finish or use "
                                    f"another --out (two grids on one folder would train the same runs twice)")
            except BaseException:
                fh.close()
                raise
            fh.close()
            time.sleep(0.2)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"gradsurg ablate (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
            fh.flush()
        except BaseException:
            _release(fh, path)
            raise
        self._lock_fh = fh
        try:
            yield self
        finally:
            self._lock_fh = None
            _release(fh, path)

    # ---------------------------------------------------------------- read
    def load(self, repair: bool = False) -> dict[str, dict]:
        """Read every row; with ``repair``, set problems aside (needs the lock). Returns the rows."""
        self.rows, self.problems, self.superseded = parse(_read_bytes(self.path))
        if repair and (self.problems or self.superseded):
            self.repair()
        return self.rows

    def check(self) -> list[str]:
        """Human-readable lines for every problem and superseded row (empty: the file is clean)."""
        return [p.describe(self.path) for p in sorted(self.problems + self.superseded, key=lambda p: p.line)]

    # --------------------------------------------------------------- write
    def _require_lock(self) -> None:
        if self._lock_fh is None:
            raise StoreError("the results store is written only under its lock (use `with store.lock():`)")

    def repair(self) -> list[Problem]:
        """Move problem lines and superseded rows to ``results.set-aside.jsonl`` and rewrite
        the file from the good rows; return what was set aside."""
        self._require_lock()
        problems = sorted(self.problems + self.superseded, key=lambda p: p.line)
        if problems:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            with open(self.set_aside_path, "a", encoding="utf-8") as fh:
                for p in problems:
                    fh.write(json.dumps({"set_aside_at": stamp, "file": RESULTS, "line": p.line,
                                         "reason": p.reason, "text": p.text}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        self._rewrite()
        self.problems, self.superseded = [], []
        return problems

    def add(self, row: dict) -> None:
        """Store ``row`` (a dict with ``key``, ``status`` and ``config``): appended whole, or,
        when its key is already stored, put in place of the old row by an atomic rewrite."""
        self._require_lock()
        line = dumps(row)
        reason = _row_problem(json.loads(line))
        if reason:
            raise ValueError(f"ResultsStore.add: the row is not storable: {reason}")
        key = row["key"]
        replacing = key in self.rows
        self.rows[key] = json.loads(line)
        if replacing:
            self._rewrite()
            return
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.lseek(fd, size - 1, os.SEEK_SET) >= 0 and os.read(fd, 1) != b"\n":
                raise StoreError(f"{self.path} ends in a torn line; load(repair=True) sets it aside before adding")
            _write_all(fd, (line + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rewrite(self) -> None:
        tmp = self.path + f".tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in self.rows.values():
                fh.write(dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.folder)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _is_file_at(fh, path: str) -> bool:
    """Whether the open file ``fh`` is still the file at ``path`` (not removed or replaced)."""
    try:
        now, mine = os.stat(path), os.fstat(fh.fileno())
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _release(fh, path: str) -> None:
    """Remove the lock file, then drop the lock (a waiter that opened the removed file notices
    and locks the path afresh: :func:`_is_file_at`)."""
    try:
        os.unlink(path)
    except OSError:  # pragma: no cover - already gone, or Windows (an open file cannot be removed)
        pass
    try:
        _unlock(fh)
    finally:
        fh.close()


try:  # POSIX
    import fcntl

    def _try_lock(fh) -> bool:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(fh) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fh) -> bool:
        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fh) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
