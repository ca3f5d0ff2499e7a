"""The batch report: one row per case in ``report.csv`` (appended as cases finish, so an interrupted batch
loses no finished case) and, at the end, the same rows once per case in ``report.csv`` and
``report.parquet``."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..io import atomic_output

__all__ = ["FIELDS", "ReportLog", "read_rows", "latest_rows", "write_final_report"]

#: The report's columns.  The first eight are the Slicer batch script's documented columns.
FIELDS = [
    "case",
    "status",
    "right_lung_ml",
    "left_lung_ml",
    "qc_ok",
    "qc_flags",
    "seconds",
    "error",
    "input",
    "series_uid",
    "slices",
    "slices_skipped",
    "engine",
    "precision",
    "device",
    "input_size",
    "model_version",
    "model_sha256",
    "options",
    "outputs",
    "worker",
    "attempts",
    "finished_at",
]


def read_rows(path: str | Path) -> list[dict]:
    """Every complete row of a report, in file order (a row cut short by a crash is left out)."""
    p = Path(path)
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        return [r for r in reader if None not in r and all(r.get(k) is not None for k in FIELDS)]


def latest_rows(rows: list[dict]) -> dict[str, dict]:
    """The last row of each case (a retried case's newest outcome), by case id, in first-seen order."""
    out: dict[str, dict] = {}
    for r in rows:
        out.pop(r["case"], None)
        out[r["case"]] = r
    return out


class ReportLog:
    """Appends one row per finished case to ``report.csv``: one write, flushed and synced, so a row is either
    all there or (cut by a crash) left out by :func:`read_rows`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existing = self.path.is_file() and self.path.stat().st_size > 0
        if existing:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), [])
            if header != FIELDS:
                raise ValueError(
                    f"{self.path} has other columns than this version's report; give another --out or move it away"
                )
        self._file = open(self.path, "a", newline="")
        if not existing:
            self._write(FIELDS, header=True)

    def _write(self, row, header: bool = False) -> None:
        buf = io.StringIO()
        w = csv.writer(buf) if header else csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
        w.writerow(row) if header else w.writerow({k: row.get(k, "") for k in FIELDS})
        self._file.write(buf.getvalue())
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, row: dict) -> None:
        self._write(row)

    def close(self) -> None:
        self._file.close()


def write_final_report(out_dir: str | Path, order: list[str]) -> dict[str, dict]:
    """Rewrite ``report.csv`` with one row per case (its latest; cases of ``order`` first, in that order, then
    any others from earlier runs) and write ``report.parquet`` beside it.  Returns the rows by case id."""
    out = Path(out_dir)
    latest = latest_rows(read_rows(out / "report.csv"))
    ids = [c for c in order if c in latest] + [c for c in latest if c not in set(order)]
    rows = [latest[c] for c in ids]
    with atomic_output(out / "report.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({k: [_typed(k, r[k]) for r in rows] for k in FIELDS}, schema=_schema(pa))
    with atomic_output(out / "report.parquet") as tmp:
        pq.write_table(table, str(tmp))
    return {c: latest[c] for c in ids}


_FLOATS = {"right_lung_ml", "left_lung_ml", "seconds"}
_INTS = {"slices", "slices_skipped", "input_size", "attempts"}


def _typed(key: str, value: str):
    if value in ("", None):
        return None
    if key in _FLOATS:
        return float(value)
    if key in _INTS:
        return int(value)
    return value


def _schema(pa):
    def kind(k):
        return pa.float64() if k in _FLOATS else pa.int64() if k in _INTS else pa.string()

    return pa.schema([(k, kind(k)) for k in FIELDS])
