"""What a deployment gets wrong, made loud: a worker that would decode pickle refuses to
start, the history database is named (password masked) in the worker's startup log and
in errors, and a step for an instance the database does not know is an error, not a
"duplicate". Real ``celery worker`` processes on Redis, SQLite and PostgreSQL."""

from __future__ import annotations

import configparser
import logging
import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery import Celery

from celery_romancy import ConfigurationError, Romancy
from celery_romancy.settings import RomancySettings, masked_url
from celery_romancy.tasks import refuse_unsafe_content

from .flows import build
from .harness import Harness
from .ledger import wait_for
from .processes import ROOT
from .services import REDIS_URL, redis_client

PASSWORD = "s3cret-Pa55"


class RunsCode:
    """Pickled, this makes whoever unpickles it create ``path``: code the sender chose."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.path),))


def with_password(url: str) -> str:
    """The URL with a password (the test PostgreSQL trusts local connections: unused)."""
    return sa.make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


# -- packaging -----------------------------------------------------------------------------


def test_the_redis_extra_brings_kombus_redis_transport_requirements() -> None:
    """kombu's Redis transport imports ``packaging``, which only ``kombu[redis]`` pulls in;
    .ci/production_install.py proves the README's install in a fresh virtualenv."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    redis_extra = setup["options.extras_require"]["redis"].split()
    assert any(requirement.startswith("kombu[redis]") for requirement in redis_extra)


# -- masking the database password --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://shop:s3cret@db/shop", "postgresql://shop:***@db/shop"),
        ("postgresql:shop:s3cret@db/shop", "postgresql:***@db/shop"),  # not even parsable
        ("postgresql://shop:s3c@ret@db/shop", "postgresql://shop:***@db/shop"),  # raw "@"
        ("postgresql://shop:s3/cret@db:5432/shop", "postgresql://shop:***@db:5432/shop"),
        ("postgresql://shop:s3cret@db:port/shop", "postgresql://shop:***@db:port/shop"),
        ("postgresql://:s3cret@db/shop", "postgresql://:***@db/shop"),
        (
            "postgresql://db/shop?sslmode=require&password=s3cret",
            "postgresql://db/shop?sslmode=require&password=***",
        ),
        ("postgresql://shop@db/shop", "postgresql://shop@db/shop"),
        ("sqlite:///romancy.db", "sqlite:///romancy.db"),
        ("sqlite:////srv/a@b:c/history.db", "sqlite:////srv/a@b:c/history.db"),
    ],
)
def test_masked_url_hides_the_password_and_nothing_else(url: str, shown: str) -> None:
    assert masked_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql:shop:{PASSWORD}@db/shop",  # no "://"
        f"postgresql://shop:{PASSWORD}@db:port/shop",  # SQLAlchemy cannot parse it
        f"postgresql+psycopg2://shop:{PASSWORD}@[::1/shop",
    ],
)
def test_a_malformed_database_url_is_refused_without_its_password(url: str) -> None:
    app = Celery("malformed_url_test", set_as_current=False)
    app.conf.romancy_database_url = url
    romancy = Romancy(app)
    with pytest.raises(ConfigurationError, match="romancy_database_url") as refused:
        romancy.storage  # noqa: B018
    assert PASSWORD not in str(refused.value)
    assert ":***@" in str(refused.value)
    with pytest.raises(ConfigurationError) as direct:
        RomancySettings(database_url=url).validate()
    assert PASSWORD not in str(direct.value)


# -- pickle --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accepted",
    [
        ["pickle", "json"],
        ["application/x-python-serialize"],
        ["json", "yaml"],
        ["application/x-yaml", "json"],
        ["JSON", "Pickle"],
    ],
)
def test_accepting_pickle_or_yaml_is_refused(accepted: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="romancy_allow_unsafe_content"):
        refuse_unsafe_content(accepted, RomancySettings())
    refuse_unsafe_content(accepted, RomancySettings(allow_unsafe_content=True))


def test_json_and_msgpack_are_accepted() -> None:
    refuse_unsafe_content(["json", "application/json", "msgpack"], RomancySettings())


def test_allow_unsafe_content_must_be_a_bool() -> None:
    with pytest.raises(ConfigurationError, match="romancy_allow_unsafe_content must be True"):
        RomancySettings(allow_unsafe_content="yes").validate()  # type: ignore[arg-type]


def test_a_worker_that_would_decode_pickle_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pickled message to a romancy step runs its sender's code as the worker decodes
    it; the worker refuses to start while the app accepts pickle, unless told to."""
    # As root, Celery refuses pickle by itself (C_FORCE_ROOT lifts that); a worker run
    # as an ordinary user, as recommended, has no such check: ours must hold there.
    monkeypatch.setenv("C_FORCE_ROOT", "true")
    database_url = f"sqlite:///{tmp_path / 'history.db'}"
    unsafe = {"accept_content": ["pickle", "json"]}

    marker = tmp_path / "refused-worker-ran-code"
    (tmp_path / "refused").mkdir()
    refusing = Harness(database_url, tmp_path / "refused", **unsafe)
    try:
        refusing.app.send_task("reserve", args=(RunsCode(marker), "t"), serializer="pickle")
        worker = refusing.worker_process().launch()
        wait_for(lambda: not worker.alive(), 60, "the worker to refuse to start")
        assert worker.process is not None and worker.process.returncode != 0
        assert "ConfigurationError: this worker accepts pickle messages" in worker.log()
        assert refusing.queued() == 1  # never taken
        assert not marker.exists()
    finally:
        refusing.close()

    # Opted out: the same message runs the code it carries (what the refusal prevents).
    marker = tmp_path / "opted-out-worker-ran-code"
    (tmp_path / "opted").mkdir()
    opted_out = Harness(
        database_url, tmp_path / "opted", **unsafe, romancy_allow_unsafe_content=True
    )
    try:
        opted_out.app.send_task("reserve", args=(RunsCode(marker), "t"), serializer="pickle")
        opted_out.worker_process(pool="threads").start()
        wait_for(marker.exists, 60, "the pickled message's code to run")
    finally:
        opted_out.close()


# -- the history database in the worker's log; steps it does not know ---------------------


def test_the_worker_names_its_history_database_and_reports_unknown_instances(
    pg_url: str, tmp_path: Path
) -> None:
    """The README's Flask defect: a web app and a worker on different databases. The
    worker says which database it uses, and a step started elsewhere is an ERROR
    naming that database, never a dropped "duplicate"."""
    worker_db = with_password(pg_url)
    harness = Harness(worker_db, tmp_path)
    worker = harness.worker_process(pool="threads", concurrency=1).start()
    shown = masked_url(worker_db)
    assert shown != worker_db
    assert f"celery_romancy: workflow history in {shown}" in worker.log()

    # A client configured with another database, sending to the same queue.
    _, elsewhere = build(f"sqlite:///{tmp_path / 'web.db'}", REDIS_URL, tmp_path, harness.queue)
    try:
        instance_id = elsewhere.start_workflow("order_saga", "ORD-lost")
        expected = f"reserve for instance {instance_id}, which the history database {shown}"
        wait_for(lambda: expected in worker.log(), 60, "the worker to report the step")
        line = next(line for line in worker.log().splitlines() if expected in line)
        assert "ERROR" in line
        assert "dropped duplicate" not in worker.log()
        assert PASSWORD not in worker.log()
    finally:
        elsewhere.storage.dispose()
        harness.close()


def test_the_default_sqlite_history_is_a_warning_in_the_worker_log(tmp_path: Path) -> None:
    """The default, a file in the worker's working directory, is fine for a demo only."""
    harness = Harness("sqlite:///romancy.db", tmp_path)
    try:
        worker = harness.worker_process(pool="threads", concurrency=1)
        worker.cwd = tmp_path  # where the default file would be
        worker.start()
        log = worker.log()
        assert "celery_romancy: workflow history in sqlite:///romancy.db" in log
        warning = f"the default sqlite:///romancy.db, the file {tmp_path / 'romancy.db'}"
        assert warning in log
        assert "WARNING" in next(line for line in log.splitlines() if warning in line)
    finally:
        harness.close()


def test_a_step_for_an_unknown_instance_is_an_error_not_a_duplicate(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = f"romancy-unknown-{uuid.uuid4().hex[:10]}"
    _, romancy = build(database_url, REDIS_URL, tmp_path, queue)
    try:
        with caplog.at_level(logging.INFO, logger="celery_romancy"):
            outcome = romancy.runner.run("never-started", uuid.uuid4().hex, "reserve")
        assert outcome == "unknown_instance"
        [record] = [r for r in caplog.records if "never-started" in r.getMessage()]
        assert record.levelno == logging.ERROR
        assert masked_url(database_url) in record.getMessage()

        # A real duplicate (an old token of a known instance) is still one.
        instance_id = romancy.start_workflow("order_saga", "ORD-dup")
        assert romancy.runner.run(instance_id, uuid.uuid4().hex, "reserve") == "duplicate"
    finally:
        redis_client().delete(queue)
        romancy.storage.dispose()
