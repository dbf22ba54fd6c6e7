"""A standalone Flink session cluster from the scripts bundled in the apache-flink wheel
(``pyflink/bin``), configured by ``flink-conf/local``; and ``flink run -py`` submission."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from jobs.paths import CACHE, ROOT

CONF_DIR = ROOT / "flink-conf" / "local"
LOG_DIR = CACHE / "flink-log"
REST = "http://127.0.0.1:8081"


def flink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def _lib_dir() -> Path:
    """The wheel's lib/ plus opt/flink-python (the cluster needs it to run Python
    operators), as links in a git-ignored folder, so the installed wheel stays untouched."""
    lib = CACHE / "flink-lib"
    lib.mkdir(parents=True, exist_ok=True)
    home = flink_home()
    for jar in [*(home / "lib").glob("*.jar"), *(home / "opt").glob("flink-python*.jar")]:
        link = lib / jar.name
        if not link.exists():
            link.symlink_to(jar)
    return lib


def _env() -> dict[str, str]:
    env = dict(os.environ)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    env.update({
        "FLINK_LIB_DIR": str(_lib_dir()),
        "FLINK_HOME": str(flink_home()), "FLINK_CONF_DIR": str(CONF_DIR), "FLINK_LOG_DIR": str(LOG_DIR),
        "PYFLINK_CLIENT_EXECUTABLE": sys.executable, "PYTHONPATH": str(ROOT),
    })
    return env


def rest(path: str, timeout_s: float = 2.0) -> dict | None:
    try:
        with urllib.request.urlopen(f"{REST}{path}", timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def rest_post(path: str, body: dict, timeout_s: float = 10.0) -> dict:
    req = urllib.request.Request(f"{REST}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def stop_with_savepoint(job_id: str, target_dir: str, drain: bool = False, timeout_s: float = 300.0) -> str:
    """Stop a job with a savepoint (``drain``: emit the final watermark first, so every
    window fires); return the savepoint's path."""
    trigger = rest_post(f"/jobs/{job_id}/stop", {"targetDirectory": target_dir, "drain": drain,
                                                 "formatType": "CANONICAL"})["request-id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = rest(f"/jobs/{job_id}/savepoints/{trigger}") or {}
        if st.get("status", {}).get("id") == "COMPLETED":
            op = st.get("operation", {})
            if "location" not in op:
                raise RuntimeError(f"stop-with-savepoint of {job_id} failed: {str(op.get('failure-cause'))[:2000]}")
            return str(op["location"])
        time.sleep(0.5)
    raise TimeoutError(f"savepoint of {job_id} not completed within {timeout_s}s")


def wait_state(job_id: str, states: tuple[str, ...], timeout_s: float = 120.0) -> str:
    """Wait until the job reaches one of ``states``; return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = (rest(f"/jobs/{job_id}") or {}).get("state", "")
        if st in states:
            return st
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} not in {states} within {timeout_s}s")


def start(task_managers: int = 1, wait_s: float = 90.0) -> None:
    """Start the JobManager and ``task_managers`` TaskManagers; wait until all registered."""
    bin_dir = flink_home() / "bin"
    ov = rest("/overview")
    if ov is None:
        subprocess.run([str(bin_dir / "jobmanager.sh"), "start"], env=_env(), check=True, stdout=subprocess.DEVNULL)
        have = 0
    else:
        have = int(ov.get("taskmanagers", 0))
    for _ in range(max(0, task_managers - have)):
        subprocess.run([str(bin_dir / "taskmanager.sh"), "start"], env=_env(), check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        ov = rest("/overview")
        if ov and int(ov.get("taskmanagers", 0)) >= task_managers:
            print(f"[cluster] up at {REST}: {ov['taskmanagers']} TaskManager(s), {ov['slots-total']} slots",
                  file=sys.stderr)
            return
        time.sleep(1)
    raise TimeoutError(f"cluster not ready within {wait_s}s; see {LOG_DIR}")


def stop() -> None:
    bin_dir = flink_home() / "bin"
    for script in ("taskmanager.sh", "jobmanager.sh"):
        subprocess.run([str(bin_dir / script), "stop-all" if script == "taskmanager.sh" else "stop"], env=_env(),
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("[cluster] stopped", file=sys.stderr)


def submit(extra_env: dict[str, str] | None = None, detached: bool = False, savepoint: str = "",
           parallelism: int = 0) -> subprocess.CompletedProcess[str]:
    """``flink run -py jobs/flink_job.py`` against the session cluster; STREAMSCORE_*
    variables configure the job as for ``streamscore run``; ``savepoint``: start from it
    (``-s``); ``parallelism``: ``-p`` and STREAMSCORE_PARALLELISM."""
    env = _env()
    env.update(extra_env or {})
    cmd = [str(flink_home() / "bin" / "flink"), "run", "-m", "127.0.0.1:8081", "-pyexec", sys.executable,
           "-pyclientexec", sys.executable]
    if savepoint:
        cmd += ["-s", savepoint]
    if parallelism:
        cmd += ["-p", str(parallelism)]
        env["STREAMSCORE_PARALLELISM"] = str(parallelism)
    if detached:
        cmd.append("-d")
    cmd += ["-py", str(ROOT / "jobs" / "flink_job.py")]
    if detached:
        cmd.append("--no-wait")
    return subprocess.run(cmd, env=env, text=True, capture_output=True, cwd=str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore cluster", description="Standalone Flink session cluster.")
    ap.add_argument("action", choices=["start", "stop", "submit", "status"])
    ap.add_argument("--task-managers", type=int, default=1, help="TaskManagers to start (default 1)")
    ap.add_argument("--detached", action="store_true", help="submit and return without waiting")
    args = ap.parse_args(argv)
    if args.action == "start":
        start(args.task_managers)
    elif args.action == "stop":
        stop()
    elif args.action == "status":
        ov = rest("/overview")
        print(json.dumps(ov) if ov else "not running")
        return 0 if ov else 1
    else:
        res = submit(detached=args.detached)
        sys.stdout.write(res.stdout)
        sys.stderr.write(res.stderr[-5000:])
        return res.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
