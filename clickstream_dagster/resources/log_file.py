"""Where the recorded page-view log comes from, and how its lines are read."""

from pathlib import Path

from dagster import ConfigurableResource, Failure, MetadataValue
from pydantic import Field

from clickstream_dagster.cleaning import (
    DEFAULT_MAX_LINE_BYTES,
    DayWindow,
    LogFile,
    LogFormatError,
    StagedLog,
    inspect_log,
    stage_log,
)
from clickstream_dagster.resources.built_defaults import BuiltValuesAreDefaults

# The committed sample, found from the package so it works whatever the working directory.
DEFAULT_LOG_PATH = Path(__file__).resolve().parents[2] / "data" / "clickstream.csv"


class ClickstreamLogFile(BuiltValuesAreDefaults, ConfigurableResource):
    """The clickstream log to prepare: comma- or tab-separated, in the log's own layout
    (``Unix Timestamp``, ``Visitor Unique ID``, ...) or with the five published columns.
    Set by the ``CLICKSTREAM_CSV`` environment variable in ``definitions.py``."""

    path: str
    max_line_bytes: int = Field(
        default=DEFAULT_MAX_LINE_BYTES,
        gt=0,
        description="Lines longer than this many bytes (line ending excluded) are rejected as "
        "too_long, so that every kept page view fits in one Kafka message.",
    )

    def inspect(self) -> LogFile:
        """The validated file, or a non-retried ``Failure`` that says what is wrong."""
        try:
            return inspect_log(self.path)
        except LogFormatError as error:
            raise self._failure(error) from error

    def stage(self, window: DayWindow, directory: Path) -> StagedLog:
        """One scan of the log, every line classified (see ``cleaning.stage_log``)."""
        log = self.inspect()
        try:
            return stage_log(log, window, directory, max_line_bytes=self.max_line_bytes)
        except LogFormatError as error:
            raise self._failure(error) from error

    def _failure(self, error: LogFormatError) -> Failure:
        return Failure(
            description=str(error), metadata={"path": MetadataValue.path(self.path)}, allow_retries=False
        )
