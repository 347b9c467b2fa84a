"""Settings come from Celery's config (``romancy_*``), read on first use, not at import."""

from __future__ import annotations

import os
import socket

import pytest
import sqlalchemy as sa
from celery import Celery

from celery_romancy import ConfigurationError, Romancy
from celery_romancy.maintenance import MAINTENANCE_TASKS, beat_schedule
from celery_romancy.settings import RomancySettings


def test_defaults_match_the_documented_table() -> None:
    settings = RomancySettings.from_celery(Celery("t").conf)
    assert settings.database_url == "sqlite:///romancy.db"
    assert settings.lease_timeout == 300
    assert settings.recovery_interval == 60
    assert settings.timer_interval == 10
    assert settings.outbox_interval == 60  # a fallback: a commit relays its own rows
    assert settings.maintenance_queue == "romancy.maintenance"
    assert settings.resolved_worker_id() == f"{socket.gethostname()}:{os.getpid()}"


def test_celery_config_keys_are_read_and_explicit_arguments_win() -> None:
    app = Celery("t")
    app.conf.update(
        romancy_database_url="sqlite:////tmp/from-conf.db",
        romancy_lease_timeout=7,
        romancy_worker_id="conf-worker",
    )
    romancy = Romancy(app, worker_id="explicit-worker")
    assert romancy.settings.database_url == "sqlite:////tmp/from-conf.db"
    assert romancy.settings.lease_timeout == 7
    assert romancy.worker_id == "explicit-worker"


def test_config_set_after_construction_is_honoured() -> None:
    app = Celery("t")
    romancy = Romancy(app)
    app.conf.romancy_database_url = "sqlite:////tmp/late.db"
    assert romancy.settings.database_url == "sqlite:////tmp/late.db"


def test_a_bad_setting_is_a_clear_error_on_first_use() -> None:
    app = Celery("t")
    app.conf.romancy_lease_timeout = -1
    romancy = Romancy(app)
    with pytest.raises(ConfigurationError, match="romancy_lease_timeout must be a positive"):
        romancy.settings  # noqa: B018


def test_prepared_statements_must_be_a_bool_and_reach_the_store() -> None:
    app = Celery("t")
    app.conf.romancy_prepared_statements = "no"
    with pytest.raises(ConfigurationError, match="romancy_prepared_statements must be True"):
        Romancy(app).settings  # noqa: B018
    off = Celery("t")
    off.conf.romancy_prepared_statements = False
    off.conf.romancy_database_url = "postgresql://nobody@127.0.0.1:1/none"
    assert Romancy(off).storage.prepared_statements is False  # type: ignore[attr-defined]
    assert RomancySettings.from_celery(Celery("t").conf).prepared_statements is True


def test_nothing_connects_until_first_use() -> None:
    # Port 1 refuses connections: constructing and decorating must not notice.
    romancy = Romancy(Celery("t"), database_url="postgresql://nobody@127.0.0.1:1/none")

    @romancy.activity("noop")
    def noop() -> None: ...

    assert romancy.storage.url.endswith("/none")
    with pytest.raises(sa.exc.OperationalError):
        romancy.storage.get_instance("x")


def test_the_package_accepts_json_for_its_own_messages() -> None:
    app = Celery("t")
    app.conf.accept_content = ["msgpack"]
    Romancy(app)
    assert "json" in app.conf.accept_content


def test_the_settings_repr_never_shows_the_database_password() -> None:
    settings = RomancySettings(database_url="postgresql://shop:s3cr3t@db/shop")
    assert "s3cr3t" not in repr(settings)
    assert "postgresql://shop:***@db/shop" in repr(settings)
    assert "lease_timeout=300.0" in repr(settings)


def test_maintenance_jobs_go_to_a_queue_of_their_own_unless_told_otherwise() -> None:
    default = beat_schedule(RomancySettings.from_celery(Celery("t").conf))
    assert set(default) == MAINTENANCE_TASKS
    assert {entry["options"]["queue"] for entry in default.values()} == {"romancy.maintenance"}

    app = Celery("t")
    app.conf.romancy_maintenance_queue = "ops"
    routed = beat_schedule(RomancySettings.from_celery(app.conf))
    assert {entry["options"]["queue"] for entry in routed.values()} == {"ops"}

    app.conf.romancy_maintenance_queue = None  # Celery's default queue, as before 0.2
    unrouted = beat_schedule(RomancySettings.from_celery(app.conf))
    assert all("queue" not in entry["options"] for entry in unrouted.values())


@pytest.mark.parametrize("queue", ["", "  ", 5])
def test_a_maintenance_queue_must_be_a_name(queue: object) -> None:
    app = Celery("t")
    app.conf.romancy_maintenance_queue = queue
    with pytest.raises(ConfigurationError, match="romancy_maintenance_queue must be a queue"):
        Romancy(app).settings  # noqa: B018
