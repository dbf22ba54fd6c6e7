"""Process trees and sessions (Linux ``/proc``): which processes a command started, and
ending every one of them before it returns.

A process whose parent dies is re-parented to init (or a subreaper) and leaves its
parent's tree, but not its session: a job started in a session of its own
(``start_new_session=True``) can always be ended whole with :func:`end_session`. A process
is named by its pid *and* start time (:class:`Proc`), so a pid reused after a recorded
process exited is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# /proc/<pid>/stat, after the ")" that ends the command name: field 3 is index 0
_STATE, _PPID, _SESSION, _STARTTIME = 0, 1, 3, 19


@dataclass(frozen=True, order=True)
class Proc:
    """One process: its pid and its start time in clock ticks after boot (which tells it
    from a later process that reuses the pid)."""

    pid: int
    started: int


def _stat(pid: int | str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _running(st: list[str] | None) -> bool:
    return st is not None and st[_STATE] not in ("Z", "X", "x")  # a zombie has exited


def proc(pid: int) -> Proc | None:
    """``pid`` as a :class:`Proc`, or None when no such process runs (zombies count as exited)."""
    st = _stat(pid)
    return Proc(pid, int(st[_STARTTIME])) if st is not None and _running(st) else None


def alive(p: Proc) -> bool:
    """True while ``p`` (the same process, not a reuse of its pid) runs; a zombie has exited."""
    st = _stat(p.pid)
    return _running(st) and int(st[_STARTTIME]) == p.started  # type: ignore[index]


def _table() -> Iterator[tuple[int, list[str]]]:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _stat(d.name)
            if _running(st):
                yield int(d.name), st  # type: ignore[misc]


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces ('' when it has exited)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def tree(root: int) -> list[Proc]:
    """``root`` and its running descendants (those re-parented away are not among them)."""
    kids: dict[int, list[Proc]] = {}
    me = None
    for pid, st in _table():
        p = Proc(pid, int(st[_STARTTIME]))
        kids.setdefault(int(st[_PPID]), []).append(p)
        if pid == root:
            me = p
    out: list[Proc] = []
    todo = [me] if me is not None else []
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p.pid, []))
    return out


def children(pid: int) -> list[Proc]:
    """Running processes whose parent is ``pid``."""
    return [Proc(c, int(st[_STARTTIME])) for c, st in _table() if int(st[_PPID]) == pid]


def session(sid: int) -> list[Proc]:
    """Running processes of session ``sid`` (the pid of the process that started it with
    ``setsid``), re-parented ones included."""
    return [Proc(pid, int(st[_STARTTIME])) for pid, st in _table() if int(st[_SESSION]) == sid]


def signal_all(procs: Iterable[Proc], sig: int) -> list[Proc]:
    """Send ``sig`` to each of ``procs`` that still runs; the ones signalled."""
    sent = []
    for p in procs:
        if p.pid == os.getpid() or not alive(p):
            continue
        try:
            os.kill(p.pid, sig)
            sent.append(p)
        except (ProcessLookupError, PermissionError):
            pass
    return sent


def wait_gone(procs: Iterable[Proc], timeout_s: float, poll_s: float = 0.05) -> list[Proc]:
    """Wait up to ``timeout_s`` until none of ``procs`` runs; those still running."""
    left = [p for p in procs if alive(p)]
    deadline = time.monotonic() + timeout_s
    while left and time.monotonic() < deadline:
        time.sleep(poll_s)
        left = [p for p in left if alive(p)]
    return left


def terminate(procs: Iterable[Proc], grace_s: float = 5.0, kill_wait_s: float = 5.0) -> list[Proc]:
    """SIGTERM every one of ``procs`` still running, SIGKILL those left after ``grace_s``;
    the processes that had to be signalled."""
    live = signal_all(procs, signal.SIGTERM)
    left = wait_gone(live, grace_s)
    if left:
        wait_gone(signal_all(left, signal.SIGKILL), kill_wait_s)
    return live


def end_session(sid: int, grace_s: float = 5.0, rounds: int = 3) -> list[Proc]:
    """End every process of session ``sid`` (SIGTERM, SIGKILL after ``grace_s``), again while
    new ones appear (a dying process may still fork); the processes signalled."""
    if sid == os.getsid(0):
        raise ValueError(f"session {sid} is the caller's own")
    ended: list[Proc] = []
    for _ in range(rounds):
        members = session(sid)
        if not members:
            break
        ended += terminate(members, grace_s)
    return ended


def reap(procs: Iterable[Proc]) -> None:
    """Collect the exit status of those of ``procs`` that are this process's exited
    children (no zombie is left); never blocks."""
    for p in procs:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(p.pid, os.WNOHANG)


class TreeRecorder:
    """Records, every ``interval_s`` in a background thread, the processes of the trees
    under ``roots()``: so a process re-parented away later (its parent died first) is
    still known to have been started under them."""

    def __init__(self, roots: Callable[[], Iterable[int]], interval_s: float = 1.0) -> None:
        self.roots = roots
        self.interval_s = interval_s
        self.seen: set[Proc] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-recorder", daemon=True)

    def snapshot(self) -> set[Proc]:
        """Record the trees now; everything recorded so far."""
        found = {p for root in self.roots() for p in tree(root)}
        with self._lock:
            self.seen |= found
            return set(self.seen)

    def start(self) -> TreeRecorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> TreeRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.snapshot()
            except Exception as exc:  # /proc races must not end the recording
                print(f"[proctree] scan failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._stop.wait(self.interval_s)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def exit_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """Turn ``signals`` into ``SystemExit(128 + n)`` in the main thread, so the command's
    ``finally`` blocks (which end what it started) run instead of the process vanishing.
    Only signals still at their default action; a no-op outside the main thread."""
    if _in_main_thread():
        for s in signals:
            if signal.getsignal(s) == signal.SIG_DFL:
                signal.signal(s, _exit_on_signal)


@contextlib.contextmanager
def deferred_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Hold ``signals`` back while the body (a cleanup that must not be cut short) runs,
    then deliver each one that arrived. A plain body outside the main thread."""
    if not _in_main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.signal(s, lambda n, _f: got.append(n)) for s in signals}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for n in dict.fromkeys(got):
            signal.raise_signal(n)
