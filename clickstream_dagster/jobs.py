"""The jobs a person launches: prepare every day from the log, or replay one day."""

from dagster import AssetSelection, define_asset_job

from clickstream_dagster.assets import prepare, replay

# One run prepares a range of days from a single scan of the log (single-run backfill).
prepare_clickstream = define_asset_job(
    "prepare_clickstream",
    selection=AssetSelection.assets(prepare.clickstream_events, prepare.clickstream_rejects),
    description="Clean the log into the daily partitions and the rejects table (launch over a range of days).",
)

replay_clickstream = define_asset_job(
    "replay_clickstream",
    selection=AssetSelection.assets(replay.click_data),
    description="Replay one prepared day into Kafka (config: topic, pacing, limit, dry_run, ...).",
    tags={replay.TOPIC_TAG: replay.DEFAULT_TOPIC},
)
