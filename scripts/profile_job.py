"""Profile the Flink job on N generated events: jstack samples of the mini-cluster JVM
(RUNNABLE task threads, top frames counted) and a py-spy recording of the Python worker.

Usage: .venv/bin/python scripts/profile_job.py --events 300000 [--set STREAMSCORE_X=V ...]
Starts its own broker on --port (default 19592) under .cache/profile-kafka and stops it.
Writes .cache/profile/jstack.txt and .cache/profile/pyspy.txt (folded stacks).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs import kafka_local  # noqa: E402
from jobs.generator import TrafficConfig, generate_events  # noqa: E402
from jobs.job_runner import fresh_topics, job_env, start_job, stop_job  # noqa: E402
from jobs.kafka_io import produce_events  # noqa: E402
from jobs.paths import CACHE, ROOT  # noqa: E402
from jobs.procstats import TreeSampler, descendants  # noqa: E402

IDLE = ("sun.nio.ch.EPoll.wait", "sun.nio.ch.Net.accept", "sun.nio.ch.SocketDispatcher.read0",
        "java.lang.ref.Reference.waitForReferencePendingList", "java.lang.ProcessHandleImpl.waitForProcessExit0",
        "Native.epollWait")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _jstack(pid: int, frames: collections.Counter[tuple[str, str]]) -> bool:
    try:
        out = subprocess.run(["jstack", str(pid)], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    for block in out.split("\n\n"):
        lines = block.strip().splitlines()
        if len(lines) < 3 or not lines[0].startswith('"') or "RUNNABLE" not in lines[1]:
            continue
        stack = [ln.strip()[3:].split("(")[0] for ln in lines[2:] if ln.strip().startswith("at ")]
        if not stack or any(idle in stack[0] for idle in IDLE):
            continue
        thread = re.sub(r"\d+", "N", lines[0].split('"')[1])[:60]
        frames[(thread, " < ".join(stack[:4]))] += 1
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--set", action="append", default=[], metavar="STREAMSCORE_X=V")
    ap.add_argument("--port", type=int, default=19592)
    ap.add_argument("--interval-s", type=float, default=2.0, help="seconds between jstack samples")
    args = ap.parse_args(argv)
    out_dir = CACHE / "profile"
    out_dir.mkdir(parents=True, exist_ok=True)
    broker = kafka_local.BrokerConfig(port=args.port, data_dir=CACHE / "profile-kafka")
    try:
        broker_pid = kafka_local.start(broker)
        topics = fresh_topics(broker.bootstrap, "prof")
        produce_events(broker.bootstrap, topics["events"],
                       generate_events(args.events, TrafficConfig(seed=5, out_of_order_fraction=0.05)),
                       total=args.events)
        env = job_env(broker.bootstrap, topics, **dict(s.split("=", 1) for s in args.set))
        frames: collections.Counter[tuple[str, str]] = collections.Counter()
        samples, pyspy = 0, None
        t0 = time.time()
        proc = start_job(env, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            with TreeSampler([proc.pid, broker_pid]) as sampler:
                while proc.poll() is None:
                    time.sleep(args.interval_s)
                    tree = descendants(proc.pid)
                    jvm = next((p for p in tree if _comm(p) == "java"), None)
                    if jvm is not None and _jstack(jvm, frames):
                        samples += 1
                    workers = [p for p in tree if _comm(p).startswith("python") and p != proc.pid]
                    if workers and pyspy is None and time.time() - t0 > 60:
                        pyspy = subprocess.Popen([str(ROOT / ".venv/bin/py-spy"), "record", "-p", str(workers[-1]),
                                                  "-d", "60", "-f", "raw", "-o", str(out_dir / "pyspy.txt"),
                                                  "--nonblocking"], stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL)
                    print(f"[profile] {time.time() - t0:5.0f} s, {samples} jstack samples", file=sys.stderr)
        finally:
            stop_job(proc)
        lines = [f"job wall {time.time() - t0:.1f} s, CPU {sampler.stats.total_cpu_s:.1f} s, {samples} samples"]
        lines += [f"{n:5d} {thread} :: {top}" for (thread, top), n in frames.most_common(80)]
        (out_dir / "jstack.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines[:40]))
    finally:
        kafka_local.stop(broker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
