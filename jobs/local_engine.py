"""The engine processes ``streamscore run`` starts: PyFlink's gateway JVM (it hosts the
embedded mini-cluster) and, under it, the Python UDF workers (``pyflink-udf-runner.sh``,
``beam_boot``, ``tee``).

Left alone they outlive the driver: the JVM notices only afterwards that the Python
side is gone (its watchdog) and then runs its shutdown hooks, and workers of a job that
did not finish are re-parented to init. :class:`LocalEngine` records that tree while it
runs and, on ``close``, shuts the gateway down the clean way (py4j shutdown, whereupon
the JVM exits), waits for the processes, and ends whatever is left.

When the gateway belongs to someone else (``flink run -py`` hands the driver its port in
``PYFLINK_GATEWAY_PORT``) there is nothing of ours to end and the engine does nothing.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, ClassVar

from jobs import proctree
from jobs.proctree import Proc

GATEWAY_MAIN = "org.apache.flink.client.python.PythonGatewayServer"

_closed: list[Any] = []  # py4j gateways shut down here: the next LocalEngine lets pyflink launch a fresh one


def owns_gateway() -> bool:
    """True when PyFlink launches its gateway JVM in this process (not ``flink run -py``)."""
    return "PYFLINK_GATEWAY_PORT" not in os.environ


def gateway_jvms() -> list[Proc]:
    """This process's children that run PyFlink's gateway server (at most one, normally)."""
    return [p for p in proctree.children(os.getpid()) if GATEWAY_MAIN in proctree.cmdline(p.pid)]


def _gateway_module() -> Any:
    return sys.modules.get("pyflink.java_gateway")


def _forget_closed_gateway() -> None:
    """After a gateway was shut down, the next ``get_gateway()`` must launch a new one.
    PyFlink's loopback workers (UDF workers run as threads of the driver on a mini-cluster)
    copy the worker environment into ``os.environ``, ``PYFLINK_GATEWAY_DISABLED`` with it;
    a driver that launched a gateway before is no UDF worker, so that flag goes too."""
    mod = _gateway_module()
    if mod is not None and any(mod._gateway is g for g in _closed):
        with mod._lock:
            mod._gateway = None
        os.environ.pop("PYFLINK_GATEWAY_DISABLED", None)


def shutdown_gateway(timeout_s: float = 5.0) -> bool:
    """py4j shutdown of PyFlink's gateway (its server and our callback server; the JVM's
    watchdog then exits it), given ``timeout_s`` in a thread; False when there was none."""
    mod = _gateway_module()
    gateway = getattr(mod, "_gateway", None) if mod is not None else None
    if gateway is None or any(gateway is g for g in _closed):
        return False
    _closed.append(gateway)
    t = threading.Thread(target=gateway.shutdown, name="gateway-shutdown", daemon=True)
    t.start()
    t.join(timeout_s)
    return True


class LocalEngine:
    """Records the gateway JVM's process tree from ``start`` on and ends it on ``close``.

    ``close`` is idempotent. While an engine is open, :meth:`current` returns it (an inner
    ``run()`` then leaves the ending to the outer one)."""

    _current: ClassVar[LocalEngine | None] = None

    def __init__(self, interval_s: float = 1.0) -> None:
        self.enabled = owns_gateway()
        self._recorder = proctree.TreeRecorder(lambda: [p.pid for p in gateway_jvms()], interval_s)
        self._open = False

    @classmethod
    def current(cls) -> LocalEngine | None:
        return cls._current

    def start(self) -> LocalEngine:
        if self.enabled and not self._open:
            _forget_closed_gateway()
            self._recorder.start()
            self._open = True
            if LocalEngine._current is None:
                LocalEngine._current = self
        return self

    def __enter__(self) -> LocalEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, shutdown_s: float = 5.0, exit_s: float = 10.0, grace_s: float = 5.0) -> list[Proc]:
        """Shut the gateway down, give its processes ``exit_s`` to exit, then SIGTERM (and,
        after ``grace_s``, SIGKILL) the rest; the processes that had to be signalled. Signals
        arriving meanwhile are delivered afterwards, so the ending is never cut short."""
        if not self._open:
            return []
        self._open = False
        if LocalEngine._current is self:
            LocalEngine._current = None
        with proctree.deferred_signals():
            self._recorder.stop()
            jvms = gateway_jvms()
            procs = list(self._recorder.snapshot())  # the tree as it is now, and whatever left it before
            if shutdown_gateway(shutdown_s):
                procs = proctree.wait_gone(procs, exit_s)
            forced = proctree.terminate(procs, grace_s)
            proctree.reap(jvms)
        if forced:
            names = ", ".join(f"{p.pid}" for p in forced)
            print(f"[job] ended {len(forced)} engine processes that had not exited: {names}", file=sys.stderr, flush=True)
        return forced
