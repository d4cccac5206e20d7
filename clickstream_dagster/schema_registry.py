"""The schema registry a typed replay writes through: one schema id per run. Pure; no Dagster.

Any Confluent-compatible registry: Confluent's, Karapace, Redpanda's, or Apicurio Registry's
``/apis/ccompat/v7``. Errors name the URL, the user (never the password) and the subject.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from clickstream_dagster.typed_encoding import (
    FIELDS,
    RECORD_NAME,
    TypedFormat,
    file_descriptor,
    registered_schema_text,
)

SubjectStrategy = Literal["topic_name", "record_name"]
URL_VARIABLE = "SCHEMA_REGISTRY_URL"
USER_INFO_VARIABLE = "SCHEMA_REGISTRY_USER_INFO"
CA_FILE_VARIABLE = "SCHEMA_REGISTRY_CA_FILE"


class RegistryError(RuntimeError):
    """The registry cannot give this replay a schema id; nothing was sent."""


def subject_name(topic: str, strategy: SubjectStrategy) -> str:
    """TopicNameStrategy: ``<topic>-value``; RecordNameStrategy: the record's full name."""
    return f"{topic}-value" if strategy == "topic_name" else RECORD_NAME


@dataclass(frozen=True)
class RegistrySettings:
    url: str
    user_info: str | None = field(default=None, repr=False)  # "user:password"; never shown
    ca_file: str | None = None
    subject_strategy: SubjectStrategy = "topic_name"
    auto_register: bool = True
    timeout_s: float = 10.0

    def __repr__(self) -> str:
        return f"RegistrySettings(url={self.shown_url!r}, user={self.user!r}, subject_strategy={self.subject_strategy!r})"

    def __post_init__(self) -> None:
        parts = urlsplit(self.url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"schema registry URL {self.shown_url!r}: expected http(s)://host[:port][/path]")
        if self.user_info is not None and ":" not in self.user_info:
            raise ValueError(f"{USER_INFO_VARIABLE}: expected user:password")

    @property
    def shown_url(self) -> str:
        """The URL without any credentials written into it."""
        parts = urlsplit(self.url or "")
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def user(self) -> str | None:
        return self.user_info.partition(":")[0] if self.user_info else None

    def client(self):
        from confluent_kafka.schema_registry import SchemaRegistryClient

        config = {"url": self.url, "timeout": self.timeout_s, "max.retries": 0}
        if self.user_info:
            config["basic.auth.user.info"] = self.user_info
        if self.ca_file:
            config["ssl.ca.location"] = self.ca_file
        return SchemaRegistryClient(config)

    def failure(self, doing: str, error: BaseException, subject: str | None = None) -> RegistryError:
        """``error`` in words that name the registry, the user or the subject, never the password."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        status = getattr(error, "http_status_code", None)
        where = f"schema registry at {self.shown_url}"
        if isinstance(error, SchemaRegistryError) and status in (401, 403):
            who = f"user {self.user!r}" if self.user else f"no credentials ({USER_INFO_VARIABLE} unset)"
            return RegistryError(f"{where} refused {who} (HTTP {status}) {doing}")
        if isinstance(error, SchemaRegistryError) and status is not None and status > 0:
            about = f" subject {subject!r}" if subject else ""
            return RegistryError(f"{where}{about}: {doing} failed: {error.error_message} (HTTP {status})")
        text = _without(str(error), self.user_info)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            trust = f"the CA in {self.ca_file}" if self.ca_file else f"the system's CAs ({CA_FILE_VARIABLE} unset)"
            return RegistryError(f"{where}: its TLS certificate is not trusted by {trust} ({doing}): {text}")
        return RegistryError(f"{where} is unreachable ({doing}): {type(error).__name__}: {text}")


def _without(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***").replace(secret.partition(":")[2] or "\0", "***")
    return text


def schema_id_for(settings: RegistrySettings, topic: str, fmt: TypedFormat | str) -> int:
    """The id to frame this replay's values with, asked once per run: the packaged schema
    registered (or found) under the subject, or with ``auto_register`` off, the subject's
    latest version, checked to describe the bytes the encoder writes."""
    fmt = TypedFormat(fmt)
    subject = subject_name(topic, settings.subject_strategy)
    client = settings.client()
    from confluent_kafka.schema_registry import Schema

    if settings.auto_register:
        try:
            return client.register_schema(subject, Schema(registered_schema_text(fmt), fmt.schema_type))
        except Exception as error:  # noqa: BLE001 - sorted by failure()
            failure = settings.failure(f"registering the {fmt.value} schema", error, subject)
            if getattr(error, "http_status_code", None) == 409:
                rule = _compatibility(client, subject)
                failure = RegistryError(
                    f"schema registry at {settings.shown_url}: subject {subject!r} refused the {fmt.value} "
                    f"schema under its {rule} compatibility rule: {error.error_message}"
                )
            raise failure from error
    try:
        latest = client.get_latest_version(subject)
    except Exception as error:  # noqa: BLE001 - sorted by failure()
        raise settings.failure("reading the latest version (auto_register is off)", error, subject) from error
    if latest.schema.schema_type != fmt.schema_type:
        raise RegistryError(
            f"schema registry at {settings.shown_url}: the latest version of subject {subject!r} is "
            f"{latest.schema.schema_type}, not {fmt.schema_type} (message_format {fmt.value})"
        )
    if problem := _mismatch(fmt, latest.schema.schema_str):
        raise RegistryError(
            f"schema registry at {settings.shown_url}: the latest version ({latest.version}) of subject "
            f"{subject!r} {problem}; register the packaged schema (auto_register) or a compatible one"
        )
    return latest.schema_id


def _compatibility(client, subject: str) -> str:
    """The rule in force for ``subject``: its own, else the registry's."""
    for ask in (lambda: client.get_compatibility(subject), client.get_compatibility):
        try:
            return ask()
        except Exception:  # noqa: BLE001 - a subject without its own rule answers 404
            continue
    return "unknown"


def _mismatch(fmt: TypedFormat, text: str) -> str | None:
    """Why the bytes the encoder writes do not fit the schema ``text``, or None."""
    if fmt == TypedFormat.AVRO:
        # Avro has no field tags: the writer's schema must list exactly these fields, in order.
        ours = [(f["name"], f["type"]) for f in json.loads(registered_schema_text(fmt))["fields"]]
        theirs = [(f.get("name"), f.get("type")) for f in json.loads(text).get("fields", [])]
        if missing := _missing([name for name, _ in ours], [name for name, _ in theirs]):
            return missing
        return None if theirs == ours else f"orders or types its fields otherwise than the packaged schema: {theirs}"
    if fmt == TypedFormat.JSON_SCHEMA:
        schema = json.loads(text)
        if missing := _missing(FIELDS, schema.get("properties", {})):
            return missing
        extra = set(schema.get("required", ())) - set(FIELDS)
        return f"requires fields the replay does not write: {sorted(extra)}" if extra else None
    ours = {f.name: f.number for f in file_descriptor().message_type[0].field}
    theirs = _protobuf_fields(text)
    if missing := _missing(ours, theirs):
        return missing
    if {name: theirs[name] for name in ours} != ours:
        return f"numbers its fields otherwise than the packaged schema: {theirs}"
    return None


def _missing(ours, theirs) -> str | None:
    lacking = [name for name in ours if name not in theirs]
    return f"lacks the field(s) {', '.join(lacking)}" if lacking else None


def _protobuf_fields(text: str) -> dict[str, int]:
    """Field name -> number of the first message of a Protobuf schema, as text or as a
    base64 FileDescriptorProto (registries return either)."""
    import base64
    import binascii

    from google.protobuf import descriptor_pb2
    from google.protobuf.message import DecodeError

    try:
        file = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(text, validate=True))
        return {f.name: f.number for f in file.message_type[0].field}
    except (binascii.Error, DecodeError, IndexError, ValueError):
        pass
    body = re.search(r"message\s+\w+\s*\{(.*?)\n\}", text, re.S)
    found = re.findall(r"(\w+)\s*=\s*(\d+)\s*[;\[]", body.group(1) if body else text)
    return {name: int(number) for name, number in found}


def schema_fetcher(settings: RegistrySettings):
    """``fetch(schema_id) -> (schema_type, schema_text)`` for ``typed_encoding.TypedDecoder``;
    None for an id the registry does not know (a value framed elsewhere: undecodable)."""
    client = settings.client()

    def fetch(schema_id: int) -> tuple[str, str] | None:
        try:
            schema = client.get_schema(schema_id)
        except Exception as error:  # noqa: BLE001 - sorted by failure()
            if getattr(error, "http_status_code", None) == 404:
                return None
            raise settings.failure(f"fetching schema id {schema_id}", error) from error
        return schema.schema_type, schema.schema_str

    return fetch
