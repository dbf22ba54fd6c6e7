"""The KRaft cluster id given to ``kafka-storage format -t`` never looks like an option."""

import uuid

from jobs import kafka_local


def test_an_id_starting_with_a_dash_is_drawn_again(monkeypatch):
    dash_first = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))  # base64 of 0b111110.. is '-'
    plain = uuid.UUID(bytes=bytes([0x10]) + bytes(15))
    draws = iter([dash_first, dash_first, plain])
    monkeypatch.setattr(kafka_local.uuid, "uuid4", lambda: next(draws))
    cluster_id = kafka_local.new_cluster_id()
    assert cluster_id == "EAAAAAAAAAAAAAAAAAAAAA"
    assert next(draws, None) is None  # all three draws were used


def test_random_ids_are_22_url_safe_characters():
    ids = {kafka_local.new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert all(len(i) == 22 and set(i) <= alphabet and not i.startswith("-") for i in ids)
