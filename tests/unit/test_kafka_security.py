"""Kafka security configuration: environment and file credentials, validation, the
generated librdkafka and Flink settings, and that the password never shows."""

from __future__ import annotations

import stat

import pytest

from jobs import kafka_local
from jobs.config import JobConfig
from jobs.kafka_security import (
    FLINK_SCRAM_LOGIN_MODULE,
    REDACTED,
    KafkaSecurity,
    client_conf,
    move_password_to_file,
    redacted,
)

SECRET = "s3cr3t-Pa55"


def sasl_env(**extra: str) -> dict[str, str]:
    return {"STREAMSCORE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "STREAMSCORE_KAFKA_USERNAME": "alice",
            "STREAMSCORE_KAFKA_PASSWORD": SECRET, **extra}


def test_default_is_plaintext_and_adds_nothing():
    sec = KafkaSecurity.from_env({})
    assert sec == KafkaSecurity()
    assert sec.protocol == "PLAINTEXT" and not sec.sasl
    assert sec.librdkafka_conf() == {} and sec.flink_options() == {} and sec.flink_options_sql() == ""
    assert client_conf("h:1", {"group.id": "g"}, security=sec) == {"bootstrap.servers": "h:1", "group.id": "g"}


def test_credentials_from_environment():
    sec = KafkaSecurity.from_env(sasl_env(STREAMSCORE_KAFKA_SASL_MECHANISM="scram-sha-256"))
    assert (sec.protocol, sec.mechanism, sec.username, sec.password) == ("SASL_PLAINTEXT", "SCRAM-SHA-256", "alice", SECRET)
    assert sec.librdkafka_conf() == {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256",
                                     "sasl.username": "alice", "sasl.password": SECRET}
    conf = client_conf("h:1", {"linger.ms": 5}, security=sec)
    assert conf["bootstrap.servers"] == "h:1" and conf["sasl.password"] == SECRET and conf["linger.ms"] == 5


def test_client_conf_reads_the_process_environment(monkeypatch):
    for k, v in sasl_env().items():
        monkeypatch.setenv(k, v)
    assert client_conf("h:1")["sasl.username"] == "alice"


def test_credentials_from_files(tmp_path):
    (tmp_path / "user").write_text("bob\n")
    (tmp_path / "pw").write_text(SECRET + "\n")
    sec = KafkaSecurity.from_env({"STREAMSCORE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                  "STREAMSCORE_KAFKA_USERNAME_FILE": str(tmp_path / "user"),
                                  "STREAMSCORE_KAFKA_PASSWORD_FILE": str(tmp_path / "pw")})
    assert (sec.username, sec.password) == ("bob", SECRET)  # trailing newline dropped


def test_variable_and_file_together_is_an_error(tmp_path):
    (tmp_path / "pw").write_text(SECRET)
    with pytest.raises(ValueError, match="not both") as err:
        KafkaSecurity.from_env(sasl_env(STREAMSCORE_KAFKA_PASSWORD_FILE=str(tmp_path / "pw")))
    assert SECRET not in str(err.value)


def test_unreadable_password_file_names_the_file(tmp_path):
    env = sasl_env(STREAMSCORE_KAFKA_PASSWORD_FILE=str(tmp_path / "missing"))
    del env["STREAMSCORE_KAFKA_PASSWORD"]
    with pytest.raises(ValueError, match="cannot read STREAMSCORE_KAFKA_PASSWORD_FILE .*missing"):
        KafkaSecurity.from_env(env)


@pytest.mark.parametrize(("env", "message"), [
    ({"STREAMSCORE_KAFKA_SECURITY_PROTOCOL": "SSL"}, "security protocol 'SSL' is not one of"),
    ({"STREAMSCORE_KAFKA_SASL_MECHANISM": "PLAIN"}, "SASL mechanism 'PLAIN' is not one of"),
    ({"STREAMSCORE_KAFKA_USERNAME": ""}, "needs a username"),
    ({"STREAMSCORE_KAFKA_PASSWORD": ""}, "needs a password for user 'alice'"),
    ({"STREAMSCORE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, "credentials are set but the security protocol is PLAINTEXT"),
    ({"STREAMSCORE_KAFKA_PASSWORD": "a\nb"}, "password contains a control character"),
    ({"STREAMSCORE_KAFKA_SSL_CA_FILE": "/etc/hostname"}, "only used with SASL_SSL"),
    ({"STREAMSCORE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "STREAMSCORE_KAFKA_SSL_CA_FILE": "/nope.pem"},
     "CA file /nope.pem does not exist"),
])
def test_bad_settings_are_refused_clearly(env, message):
    with pytest.raises(ValueError, match=message) as err:
        KafkaSecurity.from_env(sasl_env(**env))
    assert SECRET not in str(err.value)


def test_sasl_ssl_trusts_the_ca_file(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    sec = KafkaSecurity.from_env(sasl_env(STREAMSCORE_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                                          STREAMSCORE_KAFKA_SSL_CA_FILE=str(ca)))
    assert sec.librdkafka_conf()["ssl.ca.location"] == str(ca)
    opts = sec.flink_options()
    assert opts["properties.security.protocol"] == "SASL_SSL"
    assert opts["properties.ssl.truststore.type"] == "PEM"
    assert opts["properties.ssl.truststore.location"] == str(ca.resolve())


def test_flink_options_and_jaas():
    sec = KafkaSecurity.from_env(sasl_env())
    opts = sec.flink_options()
    assert opts["properties.security.protocol"] == "SASL_PLAINTEXT"
    assert opts["properties.sasl.mechanism"] == "SCRAM-SHA-512"
    assert opts["properties.sasl.jaas.config"] == (
        f'{FLINK_SCRAM_LOGIN_MODULE} required username="alice" password="{SECRET}";')
    assert FLINK_SCRAM_LOGIN_MODULE.startswith("org.apache.flink.kafka.shaded.")  # the connector's relocation
    assert sec.flink_options_sql() == "".join(f"'{k}'='{v}', " for k, v in opts.items())


def test_jaas_and_sql_escaping():
    pw = 'a"b\\c\'d'  # a"b\c'd
    sec = KafkaSecurity("SASL_PLAINTEXT", username='o"neil', password=pw)
    jaas = sec.jaas_config("M")
    assert jaas == 'M required username="o\\"neil" password="a\\"b\\\\c\'d";'
    # the SQL literal doubles the single quote and keeps the JAAS text otherwise as it is
    full = sec.jaas_config()
    assert "'properties.sasl.jaas.config'='" + full.replace("'", "''") + "', " in sec.flink_options_sql()


def test_password_never_shows():
    sec = KafkaSecurity.from_env(sasl_env())
    for text in (repr(sec), str(sec), sec.describe(), repr(JobConfig(kafka_security=sec)),
                 str(redacted(sec.flink_options())), str(redacted(sec.librdkafka_conf())),
                 str(redacted(client_conf("h:1", security=sec)))):
        assert SECRET not in text
    assert "alice" in sec.describe() and "SCRAM-SHA-512" in sec.describe()
    assert redacted(sec.flink_options())["properties.sasl.jaas.config"] == REDACTED
    assert redacted(sec.flink_options())["properties.sasl.mechanism"] == "SCRAM-SHA-512"


def test_job_config_takes_security_from_environment(monkeypatch):
    for k, v in sasl_env().items():
        monkeypatch.setenv(k, v)
    cfg = JobConfig.from_env()
    assert cfg.kafka_security.username == "alice" and cfg.kafka_security.password == SECRET
    assert JobConfig().kafka_security == KafkaSecurity()


def test_job_tables_carry_the_security_options():
    from jobs.flink_job import _kafka_sink, source_ddl
    from transforms.spec import load_spec

    cfg = JobConfig(kafka_security=KafkaSecurity.from_env(sasl_env()))
    frag = cfg.kafka_security.flink_options_sql()
    assert frag in source_ddl(cfg, load_spec())
    assert frag in _kafka_sink("s", "scores", "scored_result", "key", cfg)
    assert frag in _kafka_sink("d", "dead-letters", "dead_letter", "", cfg)
    plain = JobConfig()
    assert "sasl" not in source_ddl(plain, load_spec()) + _kafka_sink("s", "scores", "scored_result", "key", plain)


def test_local_broker_scram_users(tmp_path):
    env = {"STREAMSCORE_KAFKA_SCRAM_USERS": f"admin={SECRET}, alice=pw-2"}
    users = kafka_local.parse_scram_users(env)
    assert users == (("admin", SECRET), ("alice", "pw-2"))
    (tmp_path / "users").write_text(f"admin={SECRET}\nalice=pw-2\n")
    assert kafka_local.parse_scram_users({"STREAMSCORE_KAFKA_SCRAM_USERS_FILE": str(tmp_path / "users")}) == users
    cfg = kafka_local.BrokerConfig(port=19500, data_dir=tmp_path / "k", scram_users=users)
    assert SECRET not in repr(cfg)
    assert cfg.security.describe() == "SASL_PLAINTEXT SCRAM-SHA-512 user 'admin'"
    props = kafka_local._write_config(cfg)
    text = props.read_text()
    assert "listeners=SASL_PLAINTEXT://127.0.0.1:19500,CONTROLLER://127.0.0.1:19501" in text
    assert "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT" in text
    assert "inter.broker.listener.name=SASL_PLAINTEXT" in text
    assert ('listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.'
            f'ScramLoginModule required username="admin" password="{SECRET}";') in text
    assert stat.S_IMODE(props.stat().st_mode) == 0o600


def test_local_broker_default_stays_plaintext(tmp_path):
    cfg = kafka_local.BrokerConfig(port=19500, data_dir=tmp_path / "k")
    assert not cfg.scram and cfg.security == KafkaSecurity()
    text = kafka_local._write_config(cfg).read_text()
    assert "listeners=PLAINTEXT://127.0.0.1:19500,CONTROLLER://127.0.0.1:19501" in text and "sasl" not in text


@pytest.mark.parametrize(("users", "message"), [
    ((("a", "x"), ("a", "y")), "repeat a name"),
    ((("bad name", "x"),), "user name 'bad name' must match"),
    ((("alice", "p,w"),), "password of SCRAM user 'alice'"),
    ((("alice", ""),), "password of SCRAM user 'alice'"),
])
def test_local_broker_refuses_bad_users(tmp_path, users, message):
    with pytest.raises(ValueError, match=message) as err:
        kafka_local.BrokerConfig(data_dir=tmp_path, scram_users=users)
    assert "p,w" not in str(err.value)


def test_local_broker_entry_without_password():
    with pytest.raises(ValueError, match="entry 1 is not name=password"):
        kafka_local.parse_scram_users({"STREAMSCORE_KAFKA_SCRAM_USERS": "admin"})


def test_password_variable_moves_to_a_private_file():
    env = sasl_env()
    path = move_password_to_file(env)
    assert path is not None and "STREAMSCORE_KAFKA_PASSWORD" not in env
    assert env["STREAMSCORE_KAFKA_PASSWORD_FILE"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert KafkaSecurity.from_env(env).password == SECRET  # children read the same credentials
    assert SECRET not in str(env)
    assert move_password_to_file(env) is None  # nothing left to move
