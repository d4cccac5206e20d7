"""The schema registry of the typed message formats (avro, protobuf, json_schema)."""

from typing import Literal

import polars as pl
from dagster import ConfigurableResource, Failure
from pydantic import Field

from clickstream_dagster.encoding import EncodedMessages
from clickstream_dagster.schema_registry import (
    URL_VARIABLE,
    RegistryError,
    RegistrySettings,
    schema_fetcher,
    schema_id_for,
)
from clickstream_dagster.resources.built_defaults import BuiltValuesAreDefaults
from clickstream_dagster.typed_encoding import TypedDecoder, encode_typed


class SchemaRegistryResource(BuiltValuesAreDefaults, ConfigurableResource):
    """A Confluent-compatible schema registry (Confluent, Karapace, Redpanda, Apicurio's ccompat API).

    ``definitions.py`` fills these from ``SCHEMA_REGISTRY_*`` variables; the user info only
    ever comes through ``EnvVar`` and is never logged or put in metadata. Unset: the json
    and quix formats work as ever, and a typed one fails before anything is sent.
    """

    url: str | None = Field(default=None, description="e.g. http://127.0.0.1:8081/apis/ccompat/v7")
    user_info: str | None = Field(default=None, description="user:password for basic auth (EnvVar only)")
    ca_file: str | None = Field(default=None, description="CA bundle (PEM) to verify an https registry")
    subject_strategy: Literal["topic_name", "record_name"] = Field(
        default="topic_name",
        description="topic_name: subject <topic>-value; record_name: subject clickstream.PageView",
    )
    auto_register: bool = Field(
        default=True,
        description="register the packaged schema on first use; false: use the subject's latest "
        "version, checked against the fields",
    )
    timeout_s: float = Field(default=10.0, description="an unanswered registry request fails the run after this")

    def settings(self) -> RegistrySettings:
        if not self.url:
            raise Failure(
                f"schema registry: the typed message formats need a registry: set {URL_VARIABLE}",
                allow_retries=False,
            )
        try:
            return RegistrySettings(
                url=self.url,
                user_info=self.user_info,
                ca_file=self.ca_file,
                subject_strategy=self.subject_strategy,
                auto_register=self.auto_register,
                timeout_s=self.timeout_s,
            )
        except ValueError as error:
            raise Failure(f"schema registry: {error}", allow_retries=False) from error

    def encode(self, events: pl.DataFrame, topic: str, message_format: str) -> EncodedMessages:
        """The day framed with the schema id of ``topic`` (one registry request); raises
        ``RegistryError`` naming the registry, user or subject at fault."""
        return encode_typed(events, message_format, schema_id_for(self.settings(), topic, message_format))

    def decoder(self) -> TypedDecoder | None:
        """A decoder of typed values, or None when no registry is configured."""
        return TypedDecoder(schema_fetcher(self.settings())) if self.url else None


__all__ = ["SchemaRegistryResource", "RegistryError"]
