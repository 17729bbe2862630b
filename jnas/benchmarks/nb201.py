"""The NAS-Bench-201 CIFAR-10 table: lookups to and from the official index.

The official index is the benchmark's own shuffled order, so it is looked up through
the table's ``arch`` column, never computed. The table is loaded once (a plain CSV,
never a pickle) into numpy arrays; searchers index those arrays by base-5 code, so a
whole tabular search can run on device.
"""

from __future__ import annotations

import csv
import math
import dataclasses
import os
from pathlib import Path

import numpy as np

from jnas.spaces import nb201

ENV_VAR = "JNAS_NB201_TABLE"
DEFAULT_RELATIVE = Path("..") / "shared" / "data" / "nb201" / "nb201_cifar10.csv"

REQUIRED_COLUMNS = (
    "index",
    "arch",
    "c10_valid_acc_200",
    "c10_test_acc_200",
    "cifar10_params_mb",
    "cifar10_train_time_200_s",
)
# Optional numeric columns loaded when present.
OPTIONAL_COLUMNS = ("c10_valid_acc_12", "c10_test_acc_12")


class TableError(ValueError):
    """A benchmark table that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class NB201Table:
    """A NAS-Bench-201 table, rows ordered by the internal base-5 code.

    Attributes:
      path: the CSV it was read from.
      index: official index of each code, ``(15625,)`` int64.
      columns: numeric columns by name, each ``(15625,)`` float64, ordered by code.
    """

    path: str
    index: np.ndarray
    columns: dict[str, np.ndarray]
    _code_of_index: np.ndarray = dataclasses.field(repr=False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def index_of(self, encoding) -> int:
        """The official index of an encoding or arch string."""
        if isinstance(encoding, str):
            encoding = nb201.parse(encoding)
        code = int(nb201.encoding_to_code(nb201.validate_encoding(encoding)))
        return int(self.index[code])

    def encoding_of(self, index: int) -> np.ndarray:
        """The encoding of an official index."""
        index = int(index)
        if not 0 <= index < len(self._code_of_index):
            raise IndexError(f"NAS-Bench-201 index {index} outside [0, {len(self._code_of_index)})")
        return np.asarray(nb201.code_to_encoding(int(self._code_of_index[index])))

    def arch_of(self, index: int) -> str:
        return nb201.format_arch(self.encoding_of(index))

    def lookup(self, encoding) -> dict:
        """Index, validation and test accuracy (200 epochs) of one architecture."""
        if isinstance(encoding, str):
            encoding = nb201.parse(encoding)
        code = int(nb201.encoding_to_code(nb201.validate_encoding(encoding)))
        return {
            "index": int(self.index[code]),
            "arch": nb201.format_arch(encoding),
            "c10_valid_acc_200": float(self.columns["c10_valid_acc_200"][code]),
            "c10_test_acc_200": float(self.columns["c10_test_acc_200"][code]),
        }


def default_path() -> Path | None:
    """``$JNAS_NB201_TABLE`` if set, else ``../shared/data/nb201/nb201_cifar10.csv`` if it exists."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / DEFAULT_RELATIVE
        if candidate.is_file():
            return candidate
    return None


def load_table(path) -> NB201Table:
    """Reads and validates a NAS-Bench-201 CSV.

    Raises:
      TableError: the file is missing or unreadable, lacks a required column, holds a
        non-numeric value, a malformed arch string, or does not cover every one of the
        15,625 cells exactly once.
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"benchmark table {str(path)!r} does not exist or is not a file")
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise TableError(f"benchmark table {str(path)!r} lacks column(s): {', '.join(missing)}")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise TableError(f"cannot read benchmark table {str(path)!r}: {err}") from err

    numeric = [c for c in REQUIRED_COLUMNS if c != "arch"] + [c for c in OPTIONAL_COLUMNS if c in header]
    n = nb201.NUM_ARCHS
    if len(rows) != n:
        raise TableError(f"benchmark table {str(path)!r} has {len(rows)} rows, expected {n}")
    index = np.full(n, -1, dtype=np.int64)
    columns = {c: np.full(n, np.nan) for c in numeric if c != "index"}
    powers = nb201.NUM_OPS ** np.arange(nb201.NUM_EDGES)
    for line, row in enumerate(rows, start=2):
        try:
            encoding = nb201.parse(row["arch"])
        except nb201.ArchStringError as err:
            raise TableError(f"{path}:{line}: {err}") from err
        code = int(encoding @ powers)
        if index[code] != -1:
            raise TableError(f"{path}:{line}: arch {row['arch']!r} appears twice")
        for column in numeric:
            value = row.get(column)
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TableError(f"{path}:{line}: column {column!r} holds non-numeric value {value!r}") from None
            if not math.isfinite(number) and column == "index":
                raise TableError(f"{path}:{line}: index {value!r} is not an integer in [0, {n})")
            if column == "index":
                if number != int(number) or not 0 <= number < n:
                    raise TableError(f"{path}:{line}: index {value!r} is not an integer in [0, {n})")
                index[code] = int(number)
            else:
                columns[column][code] = number
    code_of_index = np.full(n, -1, dtype=np.int64)
    code_of_index[index] = np.arange(n)
    if (code_of_index < 0).any():
        raise TableError(f"benchmark table {str(path)!r}: official indices are not a permutation of 0..{n - 1}")
    return NB201Table(str(path), index, columns, code_of_index)
