"""Kafka client security: PLAINTEXT, or SASL_PLAINTEXT / SASL_SSL with SCRAM, from the
environment. Every Python client builds its configuration with ``client_conf``; the
Flink job's Kafka tables take ``KafkaSecurity.flink_options_sql``.

The password is never part of a repr, a log line or an exception text. The Python
workers of the Flink job read the same variables (they inherit the job's environment
on the embedded mini-cluster; on a session cluster, set them for the TaskManagers).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
# flink-sql-connector-kafka relocates the Kafka client: its JAAS login module lives here
FLINK_SCRAM_LOGIN_MODULE = "org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule"
REDACTED = "<redacted>"
_SECRET_KEYS = ("sasl.password", "sasl.jaas.config", "password")


class KafkaAuthError(RuntimeError):
    """The broker rejected the configured credentials."""


class KafkaUnreachableError(RuntimeError):
    """No broker answered within the timeout (not an authentication failure)."""


def _read_secret(env: Mapping[str, str], name: str) -> str:
    """``name`` or the file named by ``name``_FILE (trailing newline dropped); never both."""
    value, path = env.get(name), env.get(f"{name}_FILE")
    if value and path:
        raise ValueError(f"set {name} or {name}_FILE, not both")
    if path:
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read {name}_FILE {path}: {exc.strerror or type(exc).__name__}") from exc
    return value or ""


def _jaas_quote(s: str) -> str:
    """A JAAS option value: double-quoted, backslash and quote escaped (Java StreamTokenizer)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sql_quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


@dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client of the project authenticates. PLAINTEXT: no credentials."""

    # STREAMSCORE_KAFKA_SECURITY_PROTOCOL: PLAINTEXT (default), SASL_PLAINTEXT or SASL_SSL
    protocol: str = "PLAINTEXT"
    # STREAMSCORE_KAFKA_SASL_MECHANISM: SCRAM-SHA-512 (default) or SCRAM-SHA-256
    mechanism: str = "SCRAM-SHA-512"
    # STREAMSCORE_KAFKA_USERNAME, or STREAMSCORE_KAFKA_USERNAME_FILE (a file holding it)
    username: str = ""
    # STREAMSCORE_KAFKA_PASSWORD, or STREAMSCORE_KAFKA_PASSWORD_FILE (a file holding it,
    # preferred: it keeps the secret out of the process environment); never shown
    password: str = field(default="", repr=False)
    # STREAMSCORE_KAFKA_SSL_CA_FILE: PEM CA bundle that signed the brokers' certificates
    # (SASL_SSL only; empty: the system trust store)
    ssl_ca_file: str = ""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"security protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"SASL mechanism {self.mechanism!r} is not one of {', '.join(MECHANISMS)}")
        if self.protocol == "PLAINTEXT":
            if self.username or self.password:
                raise ValueError("Kafka credentials are set but the security protocol is PLAINTEXT; "
                                 "set STREAMSCORE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT or SASL_SSL")
        else:
            if not self.username:
                raise ValueError(f"{self.protocol} needs a username (STREAMSCORE_KAFKA_USERNAME or _USERNAME_FILE)")
            if not self.password:
                raise ValueError(f"{self.protocol} needs a password for user {self.username!r} "
                                 "(STREAMSCORE_KAFKA_PASSWORD or _PASSWORD_FILE)")
        for what, s in (("username", self.username), ("password", self.password)):
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in s):
                raise ValueError(f"Kafka {what} contains a control character")
        if self.ssl_ca_file:
            if self.protocol != "SASL_SSL":
                raise ValueError("STREAMSCORE_KAFKA_SSL_CA_FILE is only used with SASL_SSL")
            if not Path(self.ssl_ca_file).is_file():
                raise ValueError(f"SSL CA file {self.ssl_ca_file} does not exist")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        e = os.environ if env is None else env
        return cls(
            protocol=e.get("STREAMSCORE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").strip().upper(),
            mechanism=e.get("STREAMSCORE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512").strip().upper(),
            username=_read_secret(e, "STREAMSCORE_KAFKA_USERNAME").strip(),
            password=_read_secret(e, "STREAMSCORE_KAFKA_PASSWORD"),
            ssl_ca_file=e.get("STREAMSCORE_KAFKA_SSL_CA_FILE", ""),
        )

    @property
    def sasl(self) -> bool:
        return self.protocol != "PLAINTEXT"

    def describe(self) -> str:
        """For logs: protocol, mechanism and user, never the password."""
        return f"{self.protocol} {self.mechanism} user {self.username!r}" if self.sasl else "PLAINTEXT"

    def librdkafka_conf(self) -> dict[str, str]:
        """The confluent_kafka (librdkafka) settings; empty for PLAINTEXT."""
        if not self.sasl:
            return {}
        conf = {"security.protocol": self.protocol, "sasl.mechanism": self.mechanism,
                "sasl.username": self.username, "sasl.password": self.password}
        if self.ssl_ca_file:
            conf["ssl.ca.location"] = self.ssl_ca_file
        return conf

    def jaas_config(self, login_module: str = FLINK_SCRAM_LOGIN_MODULE) -> str:
        return (f"{login_module} required username={_jaas_quote(self.username)} "
                f"password={_jaas_quote(self.password)};")

    def flink_options(self) -> dict[str, str]:
        """The Flink Kafka connector table options (``properties.*``); empty for PLAINTEXT.
        SASL_SSL with a CA file trusts it as a PEM trust store (Kafka clients >= 2.7)."""
        if not self.sasl:
            return {}
        opts = {"properties.security.protocol": self.protocol, "properties.sasl.mechanism": self.mechanism,
                "properties.sasl.jaas.config": self.jaas_config()}
        if self.ssl_ca_file:
            opts["properties.ssl.truststore.type"] = "PEM"
            opts["properties.ssl.truststore.location"] = str(Path(self.ssl_ca_file).resolve())
        return opts

    def flink_options_sql(self) -> str:
        """``flink_options`` as a DDL ``WITH`` fragment, each entry followed by ", "."""
        return "".join(f"{_sql_quote(k)}={_sql_quote(v)}, " for k, v in self.flink_options().items())


def move_password_to_file(env: MutableMapping[str, str] | None = None) -> Path | None:
    """Replace STREAMSCORE_KAFKA_PASSWORD in ``env`` (default: this process's environment)
    by STREAMSCORE_KAFKA_PASSWORD_FILE naming a private file (removed at exit), so child
    processes never carry the password: Beam logs the whole environment of the Flink job's
    Python workers. Returns the file, or None when there was no password variable."""
    e = os.environ if env is None else env
    password = e.get("STREAMSCORE_KAFKA_PASSWORD")
    if not password:
        return None
    if e.get("STREAMSCORE_KAFKA_PASSWORD_FILE"):
        raise ValueError("set STREAMSCORE_KAFKA_PASSWORD or STREAMSCORE_KAFKA_PASSWORD_FILE, not both")
    folder = Path(tempfile.mkdtemp(prefix="streamscore-kafka-"))  # mode 0700
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "password"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password)
    e["STREAMSCORE_KAFKA_PASSWORD_FILE"] = str(path)
    del e["STREAMSCORE_KAFKA_PASSWORD"]
    return path


def redacted(conf: Mapping[str, Any]) -> dict[str, Any]:
    """A client or table configuration safe to log: secrets replaced by ``REDACTED``."""
    return {k: REDACTED if any(s in k.lower() for s in _SECRET_KEYS) else v for k, v in conf.items()}


def client_conf(bootstrap: str, extra: Mapping[str, Any] | None = None, *,
                security: KafkaSecurity | None = None) -> dict[str, Any]:
    """The configuration of every Python Kafka client: bootstrap servers, the security of
    ``security`` (default: from the environment), then ``extra``."""
    sec = KafkaSecurity.from_env() if security is None else security
    return {"bootstrap.servers": bootstrap, **sec.librdkafka_conf(), **(extra or {})}


def check_connection(bootstrap: str, security: KafkaSecurity | None = None, timeout_s: float = 10.0) -> int:
    """Fetch cluster metadata with an AdminClient; return the number of topics.
    ``KafkaAuthError`` when the broker rejects the credentials, ``KafkaUnreachableError``
    when no broker answers in ``timeout_s``."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    sec = KafkaSecurity.from_env() if security is None else security
    auth_errors: list[str] = []

    def on_error(err: Any) -> None:
        if err.code() == KafkaError._AUTHENTICATION:
            auth_errors.append(err.str())

    admin = AdminClient(client_conf(bootstrap, {"socket.timeout.ms": max(int(timeout_s * 1000), 1000),
                                                "log_level": 0, "error_cb": on_error}, security=sec))
    failure = ""
    deadline = time.monotonic() + timeout_s
    while not auth_errors:  # short metadata requests, so a rejected login ends the wait at once
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            md = admin.list_topics(timeout=min(left, 0.5))
            if md.brokers:
                return len(md.topics)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            failure = err.str() if isinstance(err, KafkaError) else str(exc)
            if isinstance(err, KafkaError) and err.code() == KafkaError._AUTHENTICATION:
                auth_errors.append(failure)
        admin.poll(0.1)  # serves the error callback
    if auth_errors:
        raise KafkaAuthError(f"Kafka authentication failed at {bootstrap} for {sec.describe()}: "
                             f"{_scrub(auth_errors[0], sec)}; check the username and password "
                             "(STREAMSCORE_KAFKA_USERNAME / STREAMSCORE_KAFKA_PASSWORD or their _FILE variants)")
    raise KafkaUnreachableError(f"no Kafka broker answered at {bootstrap} within {timeout_s:g}s "
                                f"({sec.describe()}){': ' + _scrub(failure, sec) if failure else ''}; check the address and "
                                "STREAMSCORE_KAFKA_SECURITY_PROTOCOL (a SASL listener drops PLAINTEXT clients)")


def _scrub(text: str, sec: KafkaSecurity) -> str:
    """A broker or client message with the password blanked out, should it ever echo it."""
    return text.replace(sec.password, REDACTED) if sec.password else text
