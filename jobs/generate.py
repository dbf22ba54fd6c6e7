"""``streamscore generate``: synthetic traffic to Kafka or to an Avro file."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from jobs.generator import TrafficConfig, generate_events
from jobs.kafka_io import produce_events, write_avro_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore generate", description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000, help="number of good events (default 100000)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--users", type=int, default=TrafficConfig.n_users)
    ap.add_argument("--items", type=int, default=TrafficConfig.n_items)
    ap.add_argument("--event-rate", type=float, default=TrafficConfig.event_rate_per_s,
                    help="events per second of event time")
    ap.add_argument("--out-of-order", type=float, default=0.0, help="fraction displaced within the watermark delay")
    ap.add_argument("--late", type=float, default=0.0, help="fraction displaced beyond it (late)")
    ap.add_argument("--tardy", type=float, default=0.0,
                    help="fraction displaced back 1-7 s: around the watermark and the groups' allowed lateness")
    ap.add_argument("--no-categories", action="store_true",
                    help="write event.v1 records without item_category (default: event.v2 with it)")
    ap.add_argument("--malformed-every", type=int, default=0, help="one malformed record after every N events")
    ap.add_argument("--rate", type=float, default=0.0, help="records per second of wall time; 0 = as fast as possible")
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--topic", default="events")
    ap.add_argument("--avro-file", type=Path, help="write an Avro container file instead of producing to Kafka")
    args = ap.parse_args(argv)
    cfg = TrafficConfig(seed=args.seed, n_users=args.users, n_items=args.items, event_rate_per_s=args.event_rate,
                        out_of_order_fraction=args.out_of_order, late_fraction=args.late, tardy_fraction=args.tardy,
                        item_categories=not args.no_categories)
    events = generate_events(args.events, cfg)
    if args.avro_file:
        n = write_avro_file(args.avro_file, events)
        print(json.dumps({"file": str(args.avro_file), "events": n, "config": asdict(cfg)}))
        return 0
    rep = produce_events(args.bootstrap, args.topic, events, total=args.events, rate_per_s=args.rate or None,
                         malformed_every=args.malformed_every, seed=args.seed)
    print(json.dumps({"topic": args.topic, "events": rep.events, "malformed": rep.malformed,
                      "malformed_by_reason": rep.malformed_by_reason, "seconds": round(rep.seconds, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
