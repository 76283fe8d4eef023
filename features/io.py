"""Reading and writing bases and frames: the file-system edge of ``crmscore.features``.

Everything here moves bytes; checking them against the contract is ``validate.py``'s job.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crmscore.features.schema import FILE_SUFFIXES, TABLES

logger = logging.getLogger(__name__)

#: compressed files ``read_csv`` reads by their suffix, and how to open them as text
DECOMPRESS: dict[str, Callable] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}

ARROW_STRINGS = {
    pa.string(): pd.StringDtype("pyarrow"),
    pa.large_string(): pd.StringDtype("pyarrow"),
}


class BaseNotFoundError(FileNotFoundError):
    """A base folder, or a required table in it, does not exist."""


def find_table_file(base_path: Path, table: str) -> Path | None:
    """Return the file holding ``table`` in the base folder, or None when it has none.

    Parquet wins over CSV when both exist, so a converted base is read in its fast form.
    """
    for suffix in FILE_SUFFIXES:
        candidate = Path(base_path) / f"{table}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def csv_format(path: Path) -> dict[str, str]:
    """``read_csv`` options for the file's separator: the one its header line holds most of.

    Spreadsheets in locales with a decimal comma export with ``;`` and write ``1,5``: read with
    ``,`` such a file is one column whose name is the whole header. The header decides, as it
    holds no numbers; a column name with a comma in it does not outvote the separators.
    """
    opener = DECOMPRESS.get(Path(path).suffix.lower(), open)
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        header = f.readline()
    sep = max((",", ";", "\t", "|"), key=header.count)  # ties (none in the header): ","
    return {"sep": sep, "decimal": "," if sep == ";" else "."}


#: dates written for people (``21-08-2013``, ``12/1/2010 8:26``, ``Dec-2011``, ``01-JAN-20``):
#: a text column is read as dates when every value parses with exactly one of these. When two
#: fit (every day and month <= 12: is 03/04 March or April?) it is not, with a warning. fit-table
#: keeps such a column as text; a base's date column not in ISO 8601 reads this way too
#: (``validate``), and an ambiguous one is rejected as unparseable
WRITTEN_DATE_FORMATS = (
    *(f"{date}{time}" for date in ("%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y", "%m-%d-%Y", "%d.%m.%Y", "%Y/%m/%d",
                                   "%d/%m/%y", "%m/%d/%y", "%d-%m-%y", "%m-%d-%y")
      for time in ("", " %H:%M", " %H:%M:%S")),
    "%b-%Y", "%b %Y", "%B %Y", "%b-%y", "%d-%b-%Y", "%d-%b-%y", "%d %b %Y", "%d %B %Y",
    "%b %d, %Y", "%B %d, %Y", "%Y-%m", "%m/%Y",
)


def written_date_format(values: pd.Series, where: str) -> str | None:
    """The one format of :data:`WRITTEN_DATE_FORMATS` every value (text, none missing) parses
    with, or None: none fits, or several do (then a warning naming ``where`` and the readings).
    Each format is tried on 200 distinct values first, so a column of words costs little."""
    distinct = pd.Series(values.astype(str).str.strip().unique())
    if not distinct.str.contains(r"\d", regex=True).all():  # every written date has a digit
        return None

    def fits(fmt: str, text: pd.Series) -> bool:
        return bool(pd.to_datetime(text, format=fmt, errors="coerce").notna().all())

    found = [fmt for fmt in WRITTEN_DATE_FORMATS if fits(fmt, distinct.iloc[:200]) and fits(fmt, distinct)]
    if len(found) > 1:
        logger.warning("%s reads as dates in %d ways (%s, e.g. %r): not read as dates", where, len(found),
                       " or ".join(found), distinct.iloc[0])
    return found[0] if len(found) == 1 else None


def read_table_raw(path: Path) -> pd.DataFrame:
    """Read one table file as it is, without coercing types.

    CSV columns are read as text so that validation can report unparseable values
    by row instead of pandas guessing a type and losing them. A CSV frame's ``attrs["decimal"]``
    holds the file's decimal mark (:func:`csv_format`: ``,`` in a ``;``-separated file), for
    validation to read its amounts with.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        # Text comes back Arrow-backed, the dtype the rest of the package works with.
        return pq.read_table(path).to_pandas(types_mapper=ARROW_STRINGS.get)
    if path.suffix == ".csv":
        # the separator the header holds most of (a spreadsheet in a decimal-comma locale writes
        # ";"), and Excel's Windows-1252 when the file is not UTF-8, as fit-table reads them
        fmt = csv_format(path)
        options = {"dtype": str, "keep_default_na": False, "na_values": [""], "sep": fmt["sep"]}
        try:
            frame = pd.read_csv(path, **options)
        except UnicodeDecodeError:
            logger.warning("%s is not UTF-8; read as Windows-1252", path)
            frame = pd.read_csv(path, encoding="cp1252", encoding_errors="replace", **options)
        frame.attrs["decimal"] = fmt["decimal"]
        return frame
    raise ValueError(f"unsupported table file {path}: expected one of {', '.join(FILE_SUFFIXES)}")


def read_base_raw(base_path: Path) -> dict[str, pd.DataFrame]:
    """Read every table of the contract present in ``base_path``, raw.

    Raises
    ------
    BaseNotFoundError
        If the folder does not exist or a required table is missing.
    """
    base_path = Path(base_path)
    if not base_path.is_dir():
        raise BaseNotFoundError(f"base folder {base_path} does not exist")
    frames: dict[str, pd.DataFrame] = {}
    missing = []
    for name, table in TABLES.items():
        path = find_table_file(base_path, name)
        if path is None:
            if table.required:
                missing.append(name)
            continue
        frames[name] = read_table_raw(path)
    if missing:
        expected = " or ".join(f"{{{','.join(missing)}}}{s}" for s in FILE_SUFFIXES)
        raise BaseNotFoundError(
            f"base {base_path} is missing required table(s) {', '.join(missing)}: expected {expected}"
        )
    return frames


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` as Parquet; the file appears only once it is complete."""
    write_arrow_atomic(pa.Table.from_pandas(df, preserve_index=False), path)


def write_arrow_atomic(table: pa.Table, path: Path) -> None:
    """Write an Arrow table to ``path`` as Parquet via a temporary file in the same folder and a rename."""
    write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a temporary file in ``path``'s folder, then rename it to ``path``: the
    file appears only once complete, and a failed or killed write leaves no file at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: Parquet metadata key holding a snapshot's as-of date (ISO), read by batch scoring
AS_OF_KEY = b"crmscore.as_of"
#: Parquet metadata key holding the rows of the base set aside when the snapshot was built
SET_ASIDE_KEY = b"crmscore.set_aside"


def set_aside_text(counts: Mapping[str, int]) -> str:
    """Rows set aside per table as one line, "transactions 12, interactions 1", or "none"."""
    return ", ".join(f"{name} {n}" for name, n in counts.items() if n) or "none"


def write_snapshot(snapshot: pd.DataFrame, as_of: object, path: Path,
                   set_aside: Mapping[str, int] | None = None) -> None:
    """Write a feature snapshot with its as-of date, and the rows of the base that were set
    aside (``Base.set_aside``), in the Parquet metadata."""
    table = pa.Table.from_pandas(snapshot, preserve_index=False)
    table = table.replace_schema_metadata({
        **(table.schema.metadata or {}), AS_OF_KEY: str(as_of).encode(),
        SET_ASIDE_KEY: set_aside_text(set_aside or {}).encode(),
    })
    write_arrow_atomic(table, path)


def snapshot_set_aside(path: Path) -> str | None:
    """The rows set aside when the snapshot file at ``path`` was built ("none" when every row
    passed), or None when it does not say: a snapshot written before this was recorded, or a
    folder of parts (Spark's), whose files carry no such metadata."""
    if not Path(path).is_file():
        return None
    try:
        raw = (pq.read_schema(path).metadata or {}).get(SET_ASIDE_KEY)
    except (OSError, pa.ArrowException):
        return None
    return raw.decode() if raw is not None else None


@dataclass(frozen=True)
class Base:
    """A validated base: typed frames, optional tables None when absent."""

    customers: pd.DataFrame
    transactions: pd.DataFrame
    invoices: pd.DataFrame | None = None
    interactions: pd.DataFrame | None = None
    #: rows that failed the data contract and were set aside, per table (``load_base(...,
    #: set_aside_rejects=True)``); empty when every row passed
    set_aside: dict[str, int] = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        out = {"customers": self.customers, "transactions": self.transactions}
        if self.invoices is not None:
            out["invoices"] = self.invoices
        if self.interactions is not None:
            out["interactions"] = self.interactions
        return out


def write_base(base: Base, out_path: Path) -> None:
    """Write a base as one Parquet file per table."""
    out_path = Path(out_path)
    out_path.mkdir(parents=True, exist_ok=True)
    for name, df in base.tables().items():
        write_parquet_atomic(df, out_path / f"{name}.parquet")
