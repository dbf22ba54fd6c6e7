"""A local single-node Kafka 4.x broker in KRaft mode, run as a plain JVM process from
the Maven Central jars in ``.cache/jars/kafka`` on 127.0.0.1.

``start`` formats the data folder on first use, starts the broker (or finds it already
running), waits until it answers and creates the topics; ``stop`` ends it cleanly.
Both are idempotent and survive a crash (a stale pid file is ignored).
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jobs.kafka_limits import MESSAGE_MAX_BYTES
from jobs.kafka_security import KafkaSecurity, client_conf
from jobs.paths import CACHE, KAFKA_JARS

# every topic states the broker's record-batch limit (jobs/kafka_limits.py): events take
# any value the broker does; outputs are bounded far below it
_MAX_BYTES = {"max.message.bytes": str(MESSAGE_MAX_BYTES)}
# name -> (partitions, extra topic config)
TOPICS: dict[str, tuple[int, dict[str, str]]] = {
    "events": (1, {**_MAX_BYTES}),
    "scores": (1, {"message.timestamp.type": "LogAppendTime", **_MAX_BYTES}),
    "feature-snapshots": (1, {"cleanup.policy": "compact", **_MAX_BYTES}),
    "dead-letters": (1, {**_MAX_BYTES}),
    "alerts": (1, {**_MAX_BYTES}),
    "model-control": (1, {"cleanup.policy": "compact", **_MAX_BYTES}),
    "model-metrics": (1, {**_MAX_BYTES}),
    "model-monitoring": (1, {**_MAX_BYTES}),
    "explanations": (1, {**_MAX_BYTES}),
}


@dataclass(frozen=True)
class BrokerConfig:
    """Local broker settings. Environment variables override the defaults."""

    # STREAMSCORE_KAFKA_PORT: client listener port on 127.0.0.1
    port: int = 9092
    # STREAMSCORE_KAFKA_DIR: data, logs and pid file (git-ignored)
    data_dir: Path = field(default=CACHE / "kafka")
    # STREAMSCORE_KAFKA_HEAP_MB: broker JVM heap
    heap_mb: int = 1024
    # STREAMSCORE_EVENTS_PARTITIONS: partitions of the events topic
    events_partitions: int = 1
    # STREAMSCORE_KAFKA_SCRAM_USERS (comma-separated name=password pairs) or
    # STREAMSCORE_KAFKA_SCRAM_USERS_FILE (one pair a line): SCRAM mode. The client listener
    # becomes SASL_PLAINTEXT with SCRAM-SHA-512 (the KRaft controller listener on port + 1
    # stays PLAINTEXT); the users are created when the data folder is formatted (`reset` to
    # change them) and the first one is the broker's own inter-broker user. Empty: PLAINTEXT.
    scram_users: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not 1024 <= self.port <= 65534:
            raise ValueError(f"port {self.port} out of range")
        if self.heap_mb < 256:
            raise ValueError("heap_mb must be >= 256")
        if self.events_partitions < 1:
            raise ValueError("events_partitions must be >= 1")
        names = [name for name, _ in self.scram_users]
        if len(set(names)) != len(names):
            raise ValueError(f"SCRAM users repeat a name: {names}")
        for name, password in self.scram_users:
            if not _SCRAM_NAME.fullmatch(name):
                raise ValueError(f"SCRAM user name {name!r} must match {_SCRAM_NAME.pattern}")
            if not _SCRAM_PASSWORD.fullmatch(password):
                raise ValueError(f"the password of SCRAM user {name!r} is empty or holds a character the "
                                 "storage tool cannot parse (whitespace , [ ] = \" ' \\)")

    @classmethod
    def from_env(cls) -> BrokerConfig:
        e = os.environ
        return cls(
            port=int(e.get("STREAMSCORE_KAFKA_PORT", "9092")),
            data_dir=Path(e.get("STREAMSCORE_KAFKA_DIR", str(CACHE / "kafka"))),
            heap_mb=int(e.get("STREAMSCORE_KAFKA_HEAP_MB", "1024")),
            events_partitions=int(e.get("STREAMSCORE_EVENTS_PARTITIONS", "1")),
            scram_users=parse_scram_users(e),
        )

    @property
    def scram(self) -> bool:
        return bool(self.scram_users)

    @property
    def security(self) -> KafkaSecurity:
        """How this script's own clients connect: as the first SCRAM user, or PLAINTEXT."""
        if not self.scram:
            return KafkaSecurity()
        name, password = self.scram_users[0]
        return KafkaSecurity(protocol="SASL_PLAINTEXT", mechanism="SCRAM-SHA-512", username=name, password=password)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"


_SCRAM_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SCRAM_PASSWORD = re.compile(r"[^\s,\[\]=\"'\\]{1,256}")


def parse_scram_users(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """STREAMSCORE_KAFKA_SCRAM_USERS or the file named by STREAMSCORE_KAFKA_SCRAM_USERS_FILE."""
    raw, path = env.get("STREAMSCORE_KAFKA_SCRAM_USERS", ""), env.get("STREAMSCORE_KAFKA_SCRAM_USERS_FILE", "")
    if raw and path:
        raise ValueError("set STREAMSCORE_KAFKA_SCRAM_USERS or STREAMSCORE_KAFKA_SCRAM_USERS_FILE, not both")
    if path:
        try:
            raw = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read STREAMSCORE_KAFKA_SCRAM_USERS_FILE {path}: {exc.strerror}") from exc
    users = []
    for i, item in enumerate(x.strip() for x in raw.replace("\n", ",").split(",")):
        if not item:
            continue
        name, sep, password = item.partition("=")
        if not sep:
            raise ValueError(f"SCRAM user entry {i + 1} is not name=password")
        users.append((name.strip(), password.strip()))
    return tuple(users)


def _log(msg: str) -> None:
    print(f"[kafka] {msg}", file=sys.stderr, flush=True)


def _write_config(cfg: BrokerConfig) -> Path:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    props = cfg.data_dir / "server.properties"
    ctrl = cfg.port + 1
    lst = "SASL_PLAINTEXT" if cfg.scram else "PLAINTEXT"
    sasl: list[str] = []
    if cfg.scram:  # the client listener authenticates with SCRAM; the broker talks to itself as the first user
        sasl = ["sasl.enabled.mechanisms=SCRAM-SHA-512", "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
                "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config="
                + cfg.security.jaas_config("org.apache.kafka.common.security.scram.ScramLoginModule")]
    props.touch(mode=0o600)
    props.chmod(0o600)  # the SCRAM mode's file holds the broker user's password
    props.write_text(
        "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{ctrl}",
            f"listeners={lst}://127.0.0.1:{cfg.port},CONTROLLER://127.0.0.1:{ctrl}",
            f"advertised.listeners={lst}://127.0.0.1:{cfg.port}",
            "controller.listener.names=CONTROLLER",
            f"inter.broker.listener.name={lst}",
            f"listener.security.protocol.map={lst}:{lst},CONTROLLER:PLAINTEXT",
            *sasl,
            f"log.dirs={cfg.data_dir / 'data'}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.hours=24",
            # the largest record batch the broker appends (jobs/kafka_limits.py); a larger
            # one is refused to its producer with RecordTooLargeException
            f"message.max.bytes={MESSAGE_MAX_BYTES}",
            "",
        ])
    )
    log4j = cfg.data_dir / "log4j2.properties"
    log4j.write_text(
        "\n".join([
            "rootLogger.level=WARN",
            "rootLogger.appenderRef.file.ref=file",
            "appender.file.type=File",
            "appender.file.name=file",
            f"appender.file.fileName={cfg.data_dir / 'broker.log'}",
            "appender.file.layout.type=PatternLayout",
            "appender.file.layout.pattern=[%d] %p %m (%c)%n",
            "logger.kafka.name=kafka",
            "logger.kafka.level=INFO",
            "",
        ])
    )
    return props


def _java_cmd(cfg: BrokerConfig, main: str, *args: str) -> list[str]:
    if not KAFKA_JARS.exists() or not any(KAFKA_JARS.glob("kafka_2.13-*.jar")):
        raise FileNotFoundError(f"Kafka jars missing in {KAFKA_JARS}: run `make jars`")
    return [
        "java", f"-Xmx{cfg.heap_mb}m", f"-Xms{min(cfg.heap_mb, 512)}m",
        f"-Dlog4j2.configurationFile={cfg.data_dir / 'log4j2.properties'}",
        "-cp", f"{KAFKA_JARS}/*", main, *args,
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie counts as dead
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return state != "Z"
    except OSError:
        return True


def _read_pid(cfg: BrokerConfig) -> int | None:
    try:
        pid = int(cfg.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def answers(bootstrap: str, timeout_s: float = 2.0, security: KafkaSecurity | None = None) -> bool:
    """True when a broker at ``bootstrap`` returns cluster metadata (with ``security``,
    default: from the environment)."""
    from confluent_kafka.admin import AdminClient

    try:
        conf = client_conf(bootstrap, {"socket.timeout.ms": 2000, "log_level": 0}, security=security)
        md = AdminClient(conf).list_topics(timeout=timeout_s)
        return bool(md.brokers)
    except Exception:  # KafkaException on timeout / connection refused
        return False


def create_topics(bootstrap: str, topics: dict[str, tuple[int, dict[str, str]]] | None = None,
                  security: KafkaSecurity | None = None) -> None:
    """Create any missing topics (existing ones are left as they are); ``security``
    default: from the environment."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_conf(bootstrap, security=security))
    existing = set(admin.list_topics(timeout=10).topics)
    todo = [NewTopic(name, num_partitions=parts, replication_factor=1, config=conf)
            for name, (parts, conf) in (topics or TOPICS).items() if name not in existing]
    if not todo:
        return
    for name, fut in admin.create_topics(todo, operation_timeout=30).items():
        try:
            fut.result()
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"cannot create topic {name}: {exc}") from exc
    _log(f"created topics {[t.topic for t in todo]}")


def topics_for(cfg: BrokerConfig) -> dict[str, tuple[int, dict[str, str]]]:
    topics = dict(TOPICS)
    topics["events"] = (cfg.events_partitions, TOPICS["events"][1])
    return topics


def new_cluster_id() -> str:
    """A random KRaft cluster id: url-safe base64 of a UUID, never starting with '-'.

    An id that starts with '-' would be read by ``kafka-storage format -t`` as an option
    (Kafka's own ``Uuid.randomUuid`` skips those for the same reason).

    >>> all(not new_cluster_id().startswith("-") and len(new_cluster_id()) == 22 for _ in range(200))
    True
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def start(cfg: BrokerConfig, wait_s: float = 90.0) -> int:
    """Start the broker (if not running), wait until it answers, create topics; return pid."""
    pid = _read_pid(cfg)
    sec = cfg.security
    if pid is not None and answers(cfg.bootstrap, security=sec):
        _log(f"already running (pid {pid}) on {cfg.bootstrap}")
        create_topics(cfg.bootstrap, topics_for(cfg), sec)
        return pid
    if pid is not None:
        _log(f"pid {pid} alive but not answering; stopping it")
        stop(cfg)
    if answers(cfg.bootstrap, 1.0, sec):
        raise RuntimeError(f"{cfg.bootstrap} is served by a broker this script did not start "
                           f"(no live pid in {cfg.pid_file}); stop it or choose STREAMSCORE_KAFKA_PORT")
    props = _write_config(cfg)
    if not (cfg.data_dir / "data" / "meta.properties").exists():
        cluster_id = new_cluster_id()
        scram = [a for name, password in cfg.scram_users
                 for a in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")]
        _log(f"formatting {cfg.data_dir / 'data'} (cluster {cluster_id})"
             + (f", SCRAM-SHA-512 users {[n for n, _ in cfg.scram_users]}" if scram else ""))
        res = subprocess.run(_java_cmd(cfg, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
                                       "--ignore-formatted", *scram), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        if res.returncode != 0:  # not CalledProcessError: its text would hold the SCRAM passwords
            err = res.stderr[-2000:]
            for _, password in cfg.scram_users:
                err = err.replace(password, "<redacted>")
            raise RuntimeError(f"formatting {cfg.data_dir / 'data'} failed ({res.returncode}):\n{err}")
    out = open(cfg.data_dir / "broker.out", "ab")
    proc = subprocess.Popen(_java_cmd(cfg, "kafka.Kafka", str(props)), stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    cfg.pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (cfg.data_dir / "broker.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"broker exited with {proc.returncode}:\n{tail}")
        if answers(cfg.bootstrap, 1.0, sec) and proc.poll() is None:
            _log(f"broker up on {cfg.bootstrap} (pid {proc.pid}, {sec.describe()})")
            create_topics(cfg.bootstrap, topics_for(cfg), sec)
            return proc.pid
        time.sleep(0.5)
    stop(cfg)
    raise TimeoutError(f"broker did not answer on {cfg.bootstrap} within {wait_s}s")


def stop(cfg: BrokerConfig, wait_s: float = 30.0) -> None:
    """Stop the broker: SIGTERM (controlled shutdown), then SIGKILL after ``wait_s``."""
    pid = _read_pid(cfg)
    if pid is None:
        cfg.pid_file.unlink(missing_ok=True)
        _log("not running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        _log(f"pid {pid} ignored SIGTERM; killing")
        os.kill(pid, signal.SIGKILL)
    cfg.pid_file.unlink(missing_ok=True)
    _log(f"stopped (pid {pid})")


def reset(cfg: BrokerConfig) -> None:
    """Stop the broker and delete its data."""
    import shutil

    stop(cfg)
    shutil.rmtree(cfg.data_dir / "data", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore kafka", description="Run the local KRaft Kafka broker.")
    ap.add_argument("action", choices=["start", "stop", "status", "reset"],
                    help="start (idempotent), stop, status, reset (stop and delete data)")
    args = ap.parse_args(argv)
    cfg = BrokerConfig.from_env()
    if args.action == "start":
        start(cfg)
    elif args.action == "stop":
        stop(cfg)
    elif args.action == "reset":
        reset(cfg)
    else:
        pid = _read_pid(cfg)
        up = answers(cfg.bootstrap, security=cfg.security)
        print(f"pid={pid} answering={up} bootstrap={cfg.bootstrap}")
        return 0 if up else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
