"""What publishing a step's message costs (Redis at 127.0.0.1:6379, databases 8 and 9).

    python -m benchmarks.publish_cost

1. The Redis commands per step on a real (in-process) worker, for saga3 and for the
   same three steps as a chain with the Redis result backend, as ``MONITOR`` sees them.
2. The CPU microseconds of one ``dispatch.publish`` and of its parts, in this process:
   ``send_task`` on a producer held across publishes, kombu's ``Producer.publish`` alone,
   the ``redis.Redis`` client kombu's Redis transport builds for every message it sends,
   and the ``LPUSH`` itself on a held client. Medians of alternating rounds.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

BROKER_DB, BACKEND_DB = 9, 8
os.environ.update(
    BENCH_BROKER=f"redis://127.0.0.1:6379/{BROKER_DB}",
    BENCH_BACKEND=f"redis://127.0.0.1:6379/{BACKEND_DB}",
    BENCH_QUEUE=f"publish-{uuid.uuid4().hex[:6]}",
    BENCH_DB=f"sqlite:////tmp/publish-cost-{uuid.uuid4().hex[:6]}.db",
)

import redis  # noqa: E402 - after the environment the bench app reads
from celery import chain  # noqa: E402
from kombu import Producer  # noqa: E402

from benchmarks import bench_app  # noqa: E402
from celery_romancy.commands import ActivityCommand  # noqa: E402
from celery_romancy.dispatch import Dispatch, publish  # noqa: E402
from celery_romancy.states import StepKind  # noqa: E402
from celery_romancy.testing import worker  # noqa: E402

WORKFLOWS = 30
ROUNDS = 5
PUBLISHES = 2000


def monitored(run: Callable[[], None]) -> dict[str, int]:
    """Commands per ``db command`` on the bench databases while ``run`` runs."""
    log = Path(f"/tmp/publish-cost-{uuid.uuid4().hex[:6]}.monitor")
    with log.open("w") as out:
        # Line-buffered into a file: a pipe left unread would stall MONITOR.
        monitor = subprocess.Popen(["stdbuf", "-oL", "redis-cli", "monitor"], stdout=out)
        client = redis.Redis.from_url(os.environ["BENCH_BROKER"])
        mark = uuid.uuid4().hex
        deadline = time.monotonic() + 10
        while f"{mark}-begin" not in log.read_text():  # MONITOR is listening
            client.echo(f"{mark}-begin")
            assert time.monotonic() < deadline, "redis-cli monitor did not start"
            time.sleep(0.1)
        run()
        client.echo(f"{mark}-end")
        while f"{mark}-end" not in log.read_text():
            assert time.monotonic() < deadline + 60, "MONITOR lost the end mark"
            time.sleep(0.1)
        monitor.terminate()
        monitor.wait()
    lines = log.read_text().splitlines()
    log.unlink()
    begin = max(i for i, line in enumerate(lines) if f"{mark}-begin" in line)
    end = next(i for i, line in enumerate(lines) if f"{mark}-end" in line)
    counts: dict[str, int] = {}
    for line in lines[begin + 1 : end]:
        db = line.split("[", 1)[1].split()[0]
        if db in (str(BROKER_DB), str(BACKEND_DB)):
            key = f"db{db} {line.split(chr(34))[1].upper()}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def commands_per_step() -> None:
    romancy = bench_app.romancy
    romancy.migrate()

    def workflows() -> None:
        ids = [romancy.start_workflow("bench.saga3", f"o{i}") for i in range(WORKFLOWS)]
        with worker(bench_app.app, pool="threads", concurrency=2):
            for instance_id in ids:
                romancy.wait(instance_id, timeout=60)

    def chains() -> None:
        with worker(bench_app.app, pool="threads", concurrency=2):
            sent = [
                chain(
                    bench_app.plain_reserve.s(f"c{i}"),
                    bench_app.plain_charge.s(),
                    bench_app.plain_ship.s(),
                ).apply_async()
                for i in range(WORKFLOWS)
            ]
            for result in sent:
                result.get(timeout=60)

    for name, run in (("saga3", workflows), ("chain", chains)):
        counts = monitored(run)
        steps = 3 * WORKFLOWS
        per_step = ", ".join(f"{k} {v / steps:.2f}" for k, v in sorted(counts.items()))
        print(f"{name}: {sum(counts.values()) / steps:.2f} Redis commands per step ({per_step})")


def publish_parts() -> None:
    app = bench_app.app
    queue = f"publish-{uuid.uuid4().hex[:6]}"
    command = ActivityCommand(StepKind.ACTIVITY, "bench.reserve", "bench.reserve:1", 0, {}, queue)

    def one_publish(i: int) -> None:
        assert publish(app, Dispatch(f"i{i}", "bench.saga3", uuid.uuid4().hex, command))

    held = app.producer_pool.acquire(block=True)

    def held_producer(i: int) -> None:
        app.send_task(
            command.name,
            args=(f"i{i}", "token"),
            task_id=uuid.uuid4().hex,
            queue=queue,
            serializer="json",
            ignore_result=True,
            add_to_parent=False,
            producer=held,
        )

    connection = app.connection_for_write()
    channel: Any = connection.default_channel
    bare = Producer(channel)
    client = channel.Client(connection_pool=channel.pool)

    def kombu_publish(i: int) -> None:
        bare.publish({"i": i}, exchange="", routing_key=queue, serializer="json")

    def client_construction(i: int) -> None:
        channel.Client(connection_pool=channel.pool)

    def lpush(i: int) -> None:
        client.lpush(queue, b"x")

    parts: dict[str, Callable[[int], None]] = {
        "dispatch.publish (today)": one_publish,
        "send_task, held producer": held_producer,
        "kombu Producer.publish": kombu_publish,
        "redis.Redis() per message": client_construction,
        "LPUSH, held client": lpush,
    }
    one_publish(-1)  # connections made, the queue declared
    used: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(ROUNDS):
        for name, part in parts.items():
            began = time.process_time()
            for i in range(PUBLISHES):
                part(i)
            used[name].append(1e6 * (time.process_time() - began) / PUBLISHES)
    for name, values in used.items():
        print(f"{name}: {statistics.median(values):.0f} us CPU (rounds: {values})")
    held.release()
    connection.release()
    redis.Redis.from_url(os.environ["BENCH_BROKER"]).delete(queue)


if __name__ == "__main__":
    commands_per_step()
    publish_parts()
