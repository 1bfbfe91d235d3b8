"""What a benchmark records about the machine it ran on: the CPU, its load, server versions.

Every benchmark prints these next to its figures, because this machine is shared and its numbers
mean little without them.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> float:
    """The 1-minute load average: this machine is shared, so every phase records it."""
    return round(os.getloadavg()[0], 2)


def postgres_version(admin_url: str) -> str:
    """The PostgreSQL server's version, or why it could not be read."""
    import psycopg

    try:
        with psycopg.connect(admin_url, connect_timeout=5) as connection:
            row = connection.execute("SHOW server_version").fetchone()
    except psycopg.Error as error:
        return f"unreachable ({error})"
    return str(row[0]) if row else "unknown"


def redis_version(url: str) -> str:
    """The Redis server's version, or why it could not be read."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        return str(client.info("server")["redis_version"])
    except redis.RedisError as error:
        return f"unreachable ({error})"
    finally:
        client.close()
