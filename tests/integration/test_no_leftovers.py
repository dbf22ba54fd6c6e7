"""No leftovers (issue 12): when a bounded ``streamscore run`` returns, every process it
started (the gateway JVM with the mini-cluster, the Python UDF workers) has exited, also
those re-parented to init, which only its session still names."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import proctree
from jobs.generator import TrafficConfig, generate_events
from jobs.kafka_io import produce_events
from jobs.local_engine import GATEWAY_MAIN
from jobs.paths import ROOT
from tests.integration.conftest import fresh_topics, job_env

pytestmark = pytest.mark.integration


def _command() -> list[str]:
    exe = Path(sys.executable).with_name("streamscore")  # the console script, as a user runs it
    return [str(exe), "run"] if exe.exists() else [sys.executable, "-m", "jobs.cli", "run"]


def test_bounded_run_leaves_no_process(broker, registry_path, tmp_path):
    topics = fresh_topics(broker.bootstrap)
    produce_events(broker.bootstrap, topics["events"], generate_events(300, TrafficConfig(seed=12)), total=300,
                   progress=False)
    env = job_env(broker.bootstrap, topics, STREAMSCORE_REGISTRY=str(registry_path))
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    seen: dict[proctree.Proc, str] = {}
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(_command(), env=env, cwd=ROOT, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while True:  # record the tree and the session until the command returns
            for p in set(proctree.tree(proc.pid)) | set(proctree.session(proc.pid)):
                if p not in seen:
                    seen[p] = proctree.cmdline(p.pid)
            try:
                proc.wait(0.1)  # returns the moment the command does
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise
        # at once: anything still running now has outlived the command
        left = {p: seen.get(p) or proctree.cmdline(p.pid)
                for p in [q for q in seen if proctree.alive(q)] + proctree.session(proc.pid)}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proctree.terminate(seen, grace_s=2.0)  # a failing check must not leak them either
        proctree.end_session(proc.pid, grace_s=2.0)
    assert proc.returncode == 0, err.read_text()[-4000:]
    assert json.loads(out.read_text().strip().splitlines()[-1])["job_id"]
    # not vacuous: the engine did start its processes under the command
    cmds = list(seen.values())
    assert any(GATEWAY_MAIN in c for c in cmds), cmds
    assert any("beam_boot" in c or "pyflink-udf-runner" in c for c in cmds), cmds
    assert not left, "still running after `streamscore run` returned:\n" + "\n".join(
        f"  {p.pid}: {c[:160]}" for p, c in sorted(left.items()))
