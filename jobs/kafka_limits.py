"""Record-size limits of the broker, the topics and every Kafka client of the project.

One limit governs input: the broker appends a record batch of at most
``MESSAGE_MAX_BYTES`` (10 MiB; ``message.max.bytes`` of the local broker, and
``max.message.bytes`` of every topic in ``kafka_local.TOPICS``). With one uncompressed
record per batch, the largest value the broker takes is ``max_value_bytes()`` (10 MiB
less 74 bytes of framing for a null key). Compressed batches are measured compressed, so
a value can be larger still; nothing downstream relies on an upper bound of input values.

What each client allows, and why:

- Flink source (``flink_job.source_ddl``): ``max.partition.fetch.bytes`` 10 MiB (a
  largest batch in one fetch; the limit is soft, a larger batch is still returned) and
  ``fetch.max.bytes`` 50 MiB.
- Flink sinks (``flink_job._kafka_sink``): ``max.request.size`` ``SINK_MAX_REQUEST_BYTES``
  = 10 MiB, the broker's limit (a larger request would only be refused by the broker).
  Their records are bounded far below it: a dead letter keeps at most
  ``dead_letter_max_raw_bytes`` (default 64 KiB, at most 1 MiB) of the source value, so
  it is at most ``transforms.dead_letters.max_dead_letter_bytes`` (about 81 KiB by default,
  about 1.02 MiB at most), and scores and snapshots hold validated keys and numbers.
- Python producers (``kafka_io.producer``, the peer): librdkafka ``message.max.bytes``
  ``PRODUCER_MESSAGE_MAX_BYTES`` = 10 MiB, so a tool can write any value the broker
  accepts (librdkafka's default, 1,000,000, would refuse a 1 MiB event).

A record above the broker's limit is refused to its producer (``MSG_SIZE_TOO_LARGE`` /
``RecordTooLargeException``) and never reaches the job. A record within it that is not a
valid event is dead-lettered with its first bytes, its size and its SHA-256.

>>> max_value_bytes()
10485686
>>> batch_bytes(max_value_bytes()) == MESSAGE_MAX_BYTES
True
"""

from __future__ import annotations

MESSAGE_MAX_BYTES = 10 * 1024 * 1024  # broker message.max.bytes = each topic's max.message.bytes
SINK_MAX_REQUEST_BYTES = MESSAGE_MAX_BYTES  # Flink sinks' properties.max.request.size
PRODUCER_MESSAGE_MAX_BYTES = MESSAGE_MAX_BYTES  # librdkafka message.max.bytes of the Python producers
SOURCE_MAX_PARTITION_FETCH_BYTES = MESSAGE_MAX_BYTES  # the Flink source's max.partition.fetch.bytes
RECORD_BATCH_OVERHEAD = 61  # magic v2 record batch header


def _varint_bytes(n: int) -> int:
    """Bytes of Kafka's zig-zag varint of ``n``.

    >>> [_varint_bytes(n) for n in (-1, 0, 63, 64, 10_485_686)]
    [1, 1, 1, 2, 4]
    """
    z = (n << 1) ^ (n >> 63)
    size = 1
    while z >= 0x80:
        z >>= 7
        size += 1
    return size


def batch_bytes(value_bytes: int, key_bytes: int | None = None) -> int:
    """Size of an uncompressed record batch holding one record (no headers) with a value
    of ``value_bytes`` and a key of ``key_bytes`` (None: a null key)."""
    key = _varint_bytes(-1) if key_bytes is None else _varint_bytes(key_bytes) + key_bytes
    # attributes, timestamp delta 0, offset delta 0, key, value, header count 0
    body = 1 + 1 + 1 + key + _varint_bytes(value_bytes) + value_bytes + 1
    return RECORD_BATCH_OVERHEAD + _varint_bytes(body) + body


def max_value_bytes(key_bytes: int | None = None, limit: int = MESSAGE_MAX_BYTES) -> int:
    """The largest value the broker accepts alone in an uncompressed batch."""
    value = limit - RECORD_BATCH_OVERHEAD
    while value > 0 and batch_bytes(value, key_bytes) > limit:
        value -= 1
    return value
