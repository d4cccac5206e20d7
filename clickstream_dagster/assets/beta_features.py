"""The Beta/Preview Dagster features the project relies on on purpose, in one place.

Dagster 1.13 warns each time such a definition is built, so every start (``dagster dev``,
each CLI command, each run's process) repeated the same warnings. Each decorator here builds
its definition with that one warning silenced, and says why the feature is used: none has a
stable equivalent in 1.13. Any other warning still shows.
"""

import warnings
from collections.abc import Callable
from typing import Any

from dagster import BetaWarning, PreviewWarning, asset, asset_check, observable_source_asset


def _quietly(decorator: Callable, category: type[Warning], message: str, **kwargs: Any) -> Callable:
    def decorate(fn: Callable) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=message, category=category)
            # Dagster warns either when the decorator is made or when it is applied.
            return decorator(**kwargs)(fn)

    return decorate


def single_run_asset(**kwargs: Any) -> Callable:
    """``@asset`` with a ``backfill_policy`` (Beta): one run, and one scan of the log, for a
    range of days."""
    return _quietly(asset, BetaWarning, "Parameter `backfill_policy` of function `asset`", **kwargs)


def partitioned_asset_check(**kwargs: Any) -> Callable:
    """``@asset_check`` with a ``partitions_def`` (Preview): each day shows its own check
    status, and a check loads only the days of its run."""
    return _quietly(asset_check, PreviewWarning, "Specifying a partitions_def on an AssetCheckSpec", **kwargs)


def observable_source(**kwargs: Any) -> Callable:
    """``@observable_source_asset`` (Beta): Dagster takes an observable source's observations as
    its data version (a plain ``AssetSpec``'s observations are ignored by staleness)."""
    return _quietly(observable_source_asset, BetaWarning, "Function `observable_source_asset`", **kwargs)
