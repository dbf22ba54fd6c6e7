"""Project paths shared by the entry points."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
JARS = CACHE / "jars"
FLINK_JARS = JARS / "flink"
KAFKA_JARS = JARS / "kafka"
MODELS = ROOT / "models"
REGISTRY = MODELS / "registry.json"


def flink_jar_urls() -> list[str]:
    """``file://`` URLs of the JVM parts the Flink job needs (fetched by flink-conf/pom.xml)."""
    names = ["flink-sql-connector-kafka", "flink-sql-avro", "streamscore-udfs"]
    found = sorted(FLINK_JARS.glob("*.jar")) if FLINK_JARS.exists() else []
    urls = []
    for name in names:
        hits = [p for p in found if p.name.startswith(name)]
        if not hits:
            raise FileNotFoundError(f"{name}*.jar missing from {FLINK_JARS}: run `make jars`")
        urls.append(hits[-1].as_uri())
    return urls


def git_commit() -> str:
    """The checkout's short commit id, or ``unknown`` (recorded with bench and soak runs)."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
