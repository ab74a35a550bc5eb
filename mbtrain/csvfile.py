"""CSV data (plain or gzipped): one sample per line, a label column, the other columns features.

The label column is given by header name or 0-based index (`data.csv_label`, negative
counts from the end); the header row is optional (`data.csv_header: auto` takes the first
line as a header when it holds a non-number). Lines are parsed a block at a time, so a
file is read in bounded memory (`mbtrain data convert` streams it into x.npy/y.npy);
as a training source it is read whole into float32 features and int64 labels.

    mbtrain data convert train.csv data/train/ --label label
"""

from __future__ import annotations

import gzip
import itertools
import os

import numpy as np

from mbtrain.errors import DataError

BLOCK_ROWS = 8192


def _open(path: str):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", newline="") if gz else open(path, "r", newline="")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class CsvTable:
    """The layout of a CSV file: its columns, the label column, whether line 1 is a header."""

    def __init__(self, path: str, label=0, header: str = "auto"):
        if not os.path.isfile(path):
            raise DataError(f"{path}: data file not found" if not os.path.exists(path)
                            else f"{path}: is not a file, expected a CSV file")
        self.path = path
        try:
            with _open(path) as f:
                first = next((line for line in f if line.strip()), None)
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read CSV file: {e}") from None
        if first is None:
            raise DataError(f"{path}: CSV file is empty, expected one sample per line")
        cells = [c.strip().strip('"') for c in first.rstrip("\r\n").split(",")]
        self.columns = len(cells)
        if self.columns < 2:
            raise DataError(f"{path}: line 1 has {self.columns} column, expected a label column and "
                            f"at least one feature column separated by commas")
        self.has_header = header == "yes" or (header == "auto" and not all(map(_is_number, cells)))
        self.names = cells if self.has_header else None
        self.label = self._label_index(label)
        self.features = [i for i in range(self.columns) if i != self.label]

    def _label_index(self, label) -> int:
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if self.names is None or label not in self.names:
                have = f"the header has {self.names}" if self.names else "the file has no header row"
                raise DataError(f"{self.path}: data.csv_label = {label!r}: no such column ({have})")
            return self.names.index(label)
        index = int(label)
        if not -self.columns <= index < self.columns:
            raise DataError(f"{self.path}: data.csv_label = {label}: the file has {self.columns} "
                            f"columns, expected an index in [{-self.columns}, {self.columns - 1}]")
        return index % self.columns

    def lines(self):
        """(line number, text) of each sample line: blank lines and the header skipped."""
        with _open(self.path) as f:
            numbered = ((i, line) for i, line in enumerate(f, 1) if line.strip())
            if self.has_header:
                next(numbered, None)
            yield from numbered

    def count(self) -> int:
        """Sample lines in the file (one streaming pass)."""
        return sum(1 for _ in self.lines())

    def blocks(self, rows: int = BLOCK_ROWS, class_labels: bool = True):
        """Yield (x (r, features) float64, y (r,)) for successive blocks of sample lines.

        class_labels: y must hold whole numbers and comes as int64; otherwise any finite
        number, as float64 (regression targets).
        """
        lines = self.lines()
        while True:
            block = list(itertools.islice(lines, rows))
            if not block:
                return
            table = self._parse(block)                                   # (r, columns)
            y = table[:, self.label]
            bad = np.flatnonzero(~np.isfinite(y) | ((np.mod(y, 1) != 0) if class_labels else False))
            if len(bad):
                expected = "a whole class number" if class_labels else "a finite number"
                raise DataError(f"{self.path}: line {block[bad[0]][0]}, column {self.label + 1}: label "
                                f"{y[bad[0]].item()!r} is not {expected}")
            yield table[:, self.features], y.astype(np.int64) if class_labels else y.copy()

    def _parse(self, block: list) -> np.ndarray:
        try:
            return np.loadtxt([text for _, text in block], delimiter=",", dtype=np.float64, ndmin=2)
        except ValueError:
            pass
        for number, text in block:                   # the slow path, only to name the bad cell
            cells = text.rstrip("\r\n").split(",")
            if len(cells) != self.columns:
                raise DataError(f"{self.path}: line {number} has {len(cells)} columns, expected "
                                f"{self.columns} (as on the first line)")
            for column, cell in enumerate(cells, 1):
                if not _is_number(cell):
                    raise DataError(f"{self.path}: line {number}, column {column}: {cell.strip()!r} is "
                                    f"not a number")
        raise DataError(f"{self.path}: cannot parse CSV lines {block[0][0]}-{block[-1][0]}")


def read_csv(path: str, label=0, header: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """x (N, features) float32 and y (N,) of a whole CSV file, read block by block.

    y is int64 when every label is a whole number, else float64 (regression targets; a
    classifier's data check then names the first fractional label).
    """
    table = CsvTable(path, label, header)
    xs, ys = [], []
    for x, y in table.blocks(class_labels=False):
        xs.append(x.astype(np.float32))
        ys.append(y)
    if not xs:
        raise DataError(f"{path}: CSV file has a header but no sample lines")
    y = np.concatenate(ys)
    return np.concatenate(xs), y.astype(np.int64) if np.all(np.mod(y, 1) == 0) else y
