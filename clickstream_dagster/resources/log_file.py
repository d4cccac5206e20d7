"""Where the recorded page-view log comes from."""

from pathlib import Path

from dagster import ConfigurableResource, Failure, MetadataValue

from clickstream_dagster.cleaning import LogFile, LogFormatError, inspect_log

# The committed sample, found from the package so it works whatever the working directory.
DEFAULT_LOG_PATH = Path(__file__).resolve().parents[2] / "data" / "clickstream.csv"


class ClickstreamLogFile(ConfigurableResource):
    """The clickstream log to prepare: comma- or tab-separated, in the log's own layout
    (``Unix Timestamp``, ``Visitor Unique ID``, ...) or with the five published columns.
    Set by the ``CLICKSTREAM_CSV`` environment variable in ``definitions.py``."""

    path: str

    def inspect(self) -> LogFile:
        """The validated file, or a non-retried ``Failure`` that says what is wrong."""
        try:
            return inspect_log(self.path)
        except LogFormatError as error:
            raise Failure(
                description=str(error),
                metadata={"path": MetadataValue.path(self.path)},
                allow_retries=False,
            ) from error
