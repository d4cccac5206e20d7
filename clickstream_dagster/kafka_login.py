"""Why a secured cluster refuses this client, found by logging in once, step by step.

kafka-python retries every failed connection until its bootstrap timeout and then only
says "Unable to bootstrap": a wrong password, an unknown CA, a plaintext client on a TLS
listener and a dead broker all look the same, 30 s later. ``login_problem`` connects once
to the first bootstrap server the way kafka-python does (TLS, ApiVersions, SASL handshake
and authentication, with kafka-python's own request classes and SASL mechanisms) and says
which step failed and why. It never shows the password.

No Dagster here.
"""

from __future__ import annotations

import socket
import ssl
from typing import Protocol

from kafka.errors import KafkaError, for_code
from kafka.net.sasl import get_sasl_mechanism
from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest
from kafka.protocol.parser import KafkaProtocol
from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest


class LoginSettings(Protocol):
    """What a login reads of ``kafka_client.KafkaSettings``, which asks ``login_problem`` when a
    cluster refuses it: declared here, so that this module depends on no module of ours."""

    bootstrap_servers: str
    client_id: str
    security_protocol: str
    sasl_mechanism: str | None
    sasl_username: str | None
    ssl_cafile: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None
    connect_timeout_s: float

    def client_config(self) -> dict: ...

# Enough for a TLS handshake and a SCRAM exchange on a busy machine; a login never takes longer.
MAX_LOGIN_S = 5.0


class _Closed(Exception):
    """The broker closed the connection before answering."""


class _Connection:
    def __init__(self, sock: socket.socket, client_id: str):
        self.sock = sock
        self.protocol = KafkaProtocol(client_id=client_id)

    def call(self, request):
        self.protocol.send_request(request)
        self.sock.sendall(self.protocol.send_bytes())
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise _Closed()
            for _correlation_id, response in self.protocol.receive_bytes(data):
                return response


def login_problem(settings: LoginSettings) -> str | None:
    """Why the first bootstrap server refuses these settings, or None when the login works
    (or the server cannot be reached at all: that is the client's own timeout to report)."""
    host, _, port = settings.bootstrap_servers.split(",")[0].strip().rpartition(":")
    host = host.strip("[]")
    protocol = settings.security_protocol
    timeout_s = min(settings.connect_timeout_s, MAX_LOGIN_S)
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    except (OSError, ValueError):
        return None
    try:
        sock.settimeout(timeout_s)
        if protocol in ("SSL", "SASL_SSL"):
            try:
                sock = _tls_context(settings).wrap_socket(sock, server_hostname=host)
            except ssl.SSLCertVerificationError as error:
                ca = f"ssl_cafile {settings.ssl_cafile}" if settings.ssl_cafile else "the system's CAs (no ssl_cafile)"
                return f"TLS verification of the broker's certificate failed ({error.verify_message}) using {ca}"
            except ssl.SSLError as error:
                return f"the TLS handshake failed ({error.reason or error}): is this a TLS listener?"
        connection = _Connection(sock, settings.client_id)
        return _login(connection, settings)
    except _Closed:
        return _closed_reason(settings, "before answering")
    except ssl.SSLError as error:
        if "CERTIFICATE_REQUIRED" in str(error) or "certificate required" in str(error):
            return "the broker requires a client certificate (mutual TLS): set ssl_certfile and ssl_keyfile"
        if "UNKNOWN_CA" in str(error) or "unknown ca" in str(error) or "BAD_CERTIFICATE" in str(error):
            return "the broker did not accept the client certificate (TLS verification failed on its side)"
        return f"TLS failed: {error.reason or error}"
    except (OSError, ValueError) as error:
        # A socket timeout or reset mid-login: a broker that is not answering, not a refusal.
        return None if isinstance(error, TimeoutError) else _closed_reason(settings, f"({error})")
    finally:
        sock.close()


def _tls_context(settings: LoginSettings) -> ssl.SSLContext:
    """As kafka-python builds it (kafka.net.transport): TLS 1.2+, host name checked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.ssl_cafile:
        context.load_verify_locations(settings.ssl_cafile)
    else:
        context.load_default_certs()
    if settings.ssl_certfile:
        context.load_cert_chain(certfile=settings.ssl_certfile, keyfile=settings.ssl_keyfile)
    return context


def _login(connection: _Connection, settings: LoginSettings) -> str | None:
    try:
        connection.call(ApiVersionsRequest(version=3, client_software_name="clickstream-dagster", client_software_version="1"))
    except (_Closed, KafkaError):
        # A TLS listener answers a plaintext request with a TLS alert (not a Kafka frame), or hangs up.
        if settings.security_protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):
            return (
                f"the broker did not answer in Kafka's protocol: the listener expects TLS "
                f"(security_protocol {settings.security_protocol} on a TLS listener? use SSL or SASL_SSL)"
            )
        raise
    if not settings.security_protocol.startswith("SASL"):
        try:  # a SASL listener closes the connection of a client that skips authentication
            connection.call(MetadataRequest(version=4, topics=[], allow_auto_topic_creation=False))
        except _Closed:
            return (
                f"the broker closed the connection before authentication: the listener expects SASL "
                f"(security_protocol {settings.security_protocol} on a SASL listener? use SASL_SSL or SASL_PLAINTEXT)"
            )
        return None

    who = f"user {settings.sasl_username!r} with SASL {settings.sasl_mechanism}"
    handshake = connection.call(SaslHandshakeRequest(version=1, mechanism=settings.sasl_mechanism))
    if handshake.error_code:
        return (
            f"the broker does not accept SASL {settings.sasl_mechanism} "
            f"({for_code(handshake.error_code).__name__}; it accepts {', '.join(handshake.mechanisms) or 'none'})"
        )
    mechanism = get_sasl_mechanism(settings.sasl_mechanism)(host=connection.sock.getpeername()[0], **settings.client_config())
    try:
        while not mechanism.is_done():
            response = connection.call(SaslAuthenticateRequest(version=1, auth_bytes=mechanism.auth_bytes()))
            if response.error_code:
                return f"authentication failed for {who}: {response.error_message or for_code(response.error_code).__name__}"
            mechanism.receive(response.auth_bytes)
    except _Closed:
        return f"authentication failed for {who}: the broker closed the connection (wrong user name or password?)"
    if not mechanism.is_authenticated():
        return f"authentication failed for {who}: the broker's answer did not verify"
    return None


def _closed_reason(settings: LoginSettings, when: str) -> str:
    return f"the broker closed the connection {when} (security_protocol {settings.security_protocol})"
