"""Rendering frames and stats as Dagster metadata the UI shows (tables, timestamps)."""

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import polars as pl
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

PREVIEW_ROWS = 10


def preview(df: pl.DataFrame, rows: int = PREVIEW_ROWS) -> MetadataValue:
    """The first rows as a table; values as text so the UI shows them verbatim."""
    head = df.head(rows)
    schema = TableSchema(columns=[TableColumn(name, str(dtype)) for name, dtype in head.schema.items()])
    records = [
        TableRecord({k: (None if v is None else v if isinstance(v, int | float) else str(v)) for k, v in row.items()})
        for row in head.iter_rows(named=True)
    ]
    return MetadataValue.table(records=records, schema=schema)


def counts_table(counts: Mapping[str, int], key: str, value: str = "count") -> MetadataValue:
    schema = TableSchema(columns=[TableColumn(key, "string"), TableColumn(value, "int")])
    return MetadataValue.table(
        records=[TableRecord({key: k, value: int(v)}) for k, v in sorted(counts.items())], schema=schema
    )


def epoch_text(seconds: int | None) -> str:
    if seconds is None:
        return "n/a"
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def numeric(values: Mapping[str, Any]) -> dict[str, MetadataValue]:
    """Plain ints/floats as metadata the UI plots across runs and partitions."""
    return {
        k: MetadataValue.int(v) if isinstance(v, int) else MetadataValue.float(float(v)) for k, v in values.items()
    }
