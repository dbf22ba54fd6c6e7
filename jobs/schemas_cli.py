"""``streamscore schemas``: check that the newest schema of a topic reads every older one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transforms.codecs import SCHEMA_DIR, schema_versions
from transforms.schema_compat import incompatible_writers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore schemas", description="Avro schema compatibility of schemas/.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    chk = sub.add_parser("check", help="the reader (default: the newest <name>.vN.avsc) reads every version; "
                                       "exit 1 with the problems otherwise")
    chk.add_argument("--name", default="event", help="schema family (file name before .vN.avsc); default event")
    chk.add_argument("--dir", type=Path, default=SCHEMA_DIR, help="schemas folder (default: the project's)")
    chk.add_argument("--reader", type=int, default=None, help="reader version (default: the newest)")
    args = ap.parse_args(argv)
    try:
        bad = incompatible_writers(args.dir, args.name, args.reader)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    versions = schema_versions(args.name, args.dir)
    reader = args.reader or max(versions)
    for v in versions:
        problems = bad.get(v, [])
        print(f"{args.name}.v{v}.avsc -> read by v{reader}: {'ok' if not problems else 'INCOMPATIBLE'}")
        for p in problems:
            print(f"  {p}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
