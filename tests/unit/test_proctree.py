"""Process trees, sessions and their ending (jobs/proctree.py, jobs/local_engine.py,
job_runner.stop_job), on plain ``sleep`` processes: nothing a command started may outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from jobs import chaos, job_runner, local_engine, proctree
from jobs.paths import ROOT
from jobs.proctree import Proc


def _wait_for(cond, timeout_s: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _sleeps(procs) -> list[Proc]:
    return [p for p in procs if proctree.cmdline(p.pid).startswith("sleep")]


@pytest.fixture
def spawned():
    """Popen children of a test, whose sessions are ended (and pipes closed) afterwards."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
        if p.pid != os.getsid(0):
            proctree.end_session(p.pid, grace_s=1.0)


def test_proc_is_named_by_pid_and_start_time():
    me = proctree.proc(os.getpid())
    assert me is not None and proctree.alive(me)
    assert not proctree.alive(Proc(me.pid, me.started + 1))  # the pid, reused by a later process
    done = subprocess.Popen(["true"])
    done.wait()
    assert proctree.proc(done.pid) is None


def test_session_holds_orphans_that_left_the_tree_and_stop_job_ends_them(spawned):
    # the subshell forks a sleep and exits: that sleep is re-parented away from the tree
    proc = subprocess.Popen(["sh", "-c", "(sleep 300 &); sleep 300"], start_new_session=True)
    spawned.append(proc)
    orphans = _wait_for(lambda: [p for p in _sleeps(proctree.session(proc.pid))
                                 if p not in proctree.tree(proc.pid)], what="an orphaned sleep")
    in_tree = _wait_for(lambda: _sleeps(proctree.tree(proc.pid)), what="the sleep under sh")
    job_runner.stop_job(proc, grace_s=5)
    assert proc.returncode is not None
    assert not [p for p in orphans + in_tree if proctree.alive(p)]
    assert proctree.session(proc.pid) == []


def test_stop_job_on_an_exited_job_ends_what_is_left_of_its_session(spawned):
    proc = subprocess.Popen(["sh", "-c", "sleep 300 >/dev/null & echo started"], start_new_session=True,
                            stdout=subprocess.PIPE, text=True)
    spawned.append(proc)
    assert proc.communicate(timeout=10)[0].strip() == "started"  # sh returned; its sleep runs on
    left = _wait_for(lambda: _sleeps(proctree.session(proc.pid)), what="the leftover sleep")
    job_runner.stop_job(proc)
    assert not [p for p in left if proctree.alive(p)]


def test_chaos_kill_tree_kills_the_whole_session_at_once(spawned):
    proc = subprocess.Popen(["sh", "-c", "(sleep 300 &); sleep 300"], start_new_session=True)
    spawned.append(proc)
    procs = _wait_for(lambda: len(s := _sleeps(proctree.session(proc.pid))) == 2 and s, what="two sleeps")
    assert chaos.kill_tree(proc.pid) >= 2
    proc.wait(10)
    assert not proctree.wait_gone(procs, 5.0)


def test_terminate_kills_what_ignores_sigterm(spawned):
    proc = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 300 & wait"], start_new_session=True)
    spawned.append(proc)
    procs = _wait_for(lambda: len(t := proctree.tree(proc.pid)) == 2 and t, what="sh and its sleep")
    t0 = time.monotonic()
    signalled = proctree.terminate(procs, grace_s=0.5)
    assert sorted(signalled) == sorted(procs)
    assert not [p for p in procs if proctree.alive(p)]
    assert time.monotonic() - t0 < 5


def test_end_session_refuses_the_callers_own_session():
    with pytest.raises(ValueError):
        proctree.end_session(os.getsid(0))


def test_recorder_remembers_processes_whose_parent_died(spawned):
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"], start_new_session=True)
    spawned.append(proc)
    with proctree.TreeRecorder(lambda: [proc.pid], interval_s=0.05) as rec:
        _wait_for(lambda: len(_sleeps(rec.snapshot())) == 2, what="two recorded sleeps")
    proc.kill()  # the parent dies first: its sleeps leave the tree
    proc.wait()
    sleeps = _sleeps(rec.seen)
    assert all(proctree.alive(p) for p in sleeps) and proctree.tree(proc.pid) == []
    proctree.terminate(rec.seen, grace_s=1.0)
    assert not [p for p in sleeps if proctree.alive(p)]


@pytest.fixture
def fake_gateway(monkeypatch):
    """A child of this process that looks like PyFlink's gateway JVM to LocalEngine (its
    command line holds a unique marker), with two ``sleep`` workers under it."""
    marker = f"FakeGatewayServer-{uuid.uuid4().hex}"
    monkeypatch.setattr(local_engine, "GATEWAY_MAIN", marker)
    monkeypatch.setattr(local_engine, "_gateway_module", lambda: None)  # no py4j gateway in this test
    monkeypatch.delenv("PYFLINK_GATEWAY_PORT", raising=False)
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait", marker])
    yield proc
    for p in proctree.tree(proc.pid):
        os.kill(p.pid, signal.SIGKILL)
    proc.wait()


def test_local_engine_ends_the_gateway_tree(fake_gateway):
    with local_engine.LocalEngine(interval_s=0.05) as engine:
        assert local_engine.LocalEngine.current() is engine
        _wait_for(lambda: len(proctree.tree(fake_gateway.pid)) == 3, what="the fake gateway and two workers")
        tree = proctree.tree(fake_gateway.pid)
        forced = engine.close(exit_s=0.2, grace_s=1.0)
    assert sorted(forced) == sorted(tree)  # nothing shut it down on its own: each had to be signalled
    assert not [p for p in tree if proctree.alive(p)]
    assert local_engine.LocalEngine.current() is None
    assert engine.close() == []  # idempotent


def test_local_engine_ends_workers_orphaned_by_a_dead_gateway(fake_gateway):
    engine = local_engine.LocalEngine(interval_s=0.05).start()
    try:
        _wait_for(lambda: len(_sleeps(engine._recorder.snapshot())) == 2, what="two recorded workers")
        workers = _sleeps(proctree.tree(fake_gateway.pid))
        fake_gateway.kill()  # the JVM dies before the driver: its workers are re-parented to init
        fake_gateway.wait()
        assert all(proctree.alive(p) for p in workers)
    finally:
        engine.close(exit_s=0.2, grace_s=1.0)
    assert not [p for p in workers if proctree.alive(p)]


def test_local_engine_does_nothing_for_a_gateway_it_does_not_own(monkeypatch):
    monkeypatch.setenv("PYFLINK_GATEWAY_PORT", "1")  # `flink run -py`: the gateway is the CLI's
    engine = local_engine.LocalEngine().start()
    assert local_engine.LocalEngine.current() is None
    assert engine.close() == []


def test_deferred_signals_are_delivered_after_the_body():
    got: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda n, _f: got.append(n))
    try:
        with proctree.deferred_signals((signal.SIGUSR1,)):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)
            assert got == []
        assert got == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_sigterm_runs_finally_blocks():
    code = ("import os, signal, time\n"
            "from jobs.proctree import exit_on_signals\n"
            "exit_on_signals()\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(10)\n"
            "finally:\n"
            "    print('cleaned up', flush=True)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 128 + signal.SIGTERM
    assert res.stdout.strip() == "cleaned up"
