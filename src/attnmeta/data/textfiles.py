"""Line-aware parsing of user CSV / JSON / JSON-lines files: every problem is one ``DataError`` line naming
the file and the line (invalid UTF-8, broken JSON, unterminated CSV quote, wrong number of CSV fields)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnmeta.data.safe_io import read_text
from attnmeta.errors import DataError

__all__ = ["csv_records", "json_document", "json_lines"]


def _csv_error(path: Path, start: int, error: csv.Error) -> DataError:
    if "unexpected end of data" in str(error):
        return DataError(f"{path}:{start}: unterminated quoted field (the '\"' opened on this line is never "
                         "closed); close the quote, and write a quote inside a quoted field as \"\"")
    return DataError(f"{path}:{start}: malformed CSV ({error}); quote fields that contain the delimiter and "
                     "write a quote inside a quoted field as \"\"")


def csv_records(path: Path, required: Sequence[str], hint: str,
                delimiter: str = ",") -> list[tuple[int, dict]]:
    """``(line number, {column: value})`` for every non-blank row of a CSV file with a header row.

    ``hint`` ends the error when the header lacks a ``required`` column. The line number is where the row
    starts (a quoted field may span lines).
    """
    reader = csv.reader(io.StringIO(read_text(path, "the CSV file"), newline=""), delimiter=delimiter,
                        strict=True)
    rows: list[tuple[int, dict]] = []
    line = 0
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty; it needs a header row ({delimiter.join(required)}) and data "
                            "rows")
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}:1: header {header} lacks column(s) {missing}; {hint}")
        line = reader.line_num
        for fields in reader:
            start, line = line + 1, reader.line_num
            if not fields:
                continue
            if len(fields) != len(header):
                raise DataError(f"{path}:{start}: {len(fields)} fields, but the header has {len(header)}; "
                                f"quote fields that contain {delimiter!r} and give every row {len(header)} "
                                "fields")
            rows.append((start, dict(zip(header, fields))))
    except csv.Error as error:
        raise _csv_error(path, line + 1, error) from None
    return rows


def _json_error(path: Path, error: json.JSONDecodeError, line: int | None = None) -> DataError:
    where = f"{path}:{line if line is not None else error.lineno}"
    return DataError(f"{where}: invalid JSON ({error.msg} at column {error.colno}); fix the file or export "
                     "it again as JSON")


def json_document(path: Path) -> Any:
    """A whole-file JSON document; broken JSON raises ``DataError`` with the line."""
    try:
        return json.loads(read_text(path, "the JSON file"))
    except json.JSONDecodeError as error:
        raise _json_error(path, error) from None


def json_lines(path: Path) -> list[tuple[int, Any]]:
    """``(line number, value)`` for every non-blank line of a JSON-lines file."""
    out = []
    # split on "\n" only: str.splitlines would also split inside strings holding U+2028 and the like
    for number, line in enumerate(read_text(path, "the JSON-lines file").split("\n"), 1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise _json_error(path, error, number) from None
    return out
