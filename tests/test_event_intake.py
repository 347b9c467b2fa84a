"""The event intake is safe by default: who may send, how much, what is refused, how long
events are kept. Each test runs the real WSGI app (or ``send_event``) on SQLite and
PostgreSQL and counts the rows in ``romancy_events`` to prove what was (not) written."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from celery import Celery
from flask import Flask, Response, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from celery_romancy import (
    ConfigurationError,
    InvalidArgumentsError,
    Romancy,
    SerializationError,
)
from celery_romancy.contrib.cloudevents import CloudEventsIntake, NotAuthenticatedError
from celery_romancy.contrib.signing import hmac_authorizer, signature
from celery_romancy.errors import PayloadTooLargeError
from celery_romancy.events import event_key, payload_hash
from celery_romancy.storage import open_store
from celery_romancy.storage.migrate import alembic_config, current_revision, upgrade
from celery_romancy.storage.schema import events, utcnow

from .harness import Harness
from .step_rows import set_instance
from .wait_flows import Payment

STRUCTURED = "application/cloudevents+json"
LIMIT = 1 << 20


@pytest.fixture
def harness(database_url: str, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(database_url, tmp_path)
    yield h
    h.close()


def open_intake(h: Harness, **options: Any) -> CloudEventsIntake:
    return CloudEventsIntake(h.romancy, **({"allow_anonymous": True} | options))


def cloud_event(**attributes: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/payments",
        "type": "payment.received",
        "romancycorrelationid": "ORD-1",
        "data": {"order_id": "ORD-1", "amount": 1.5},
        **attributes,
    }


def post(
    app: Any, event: dict[str, Any] | bytes | str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    body = json.dumps(event) if isinstance(event, dict) else event
    response = Client(app).post("/", data=body, content_type=STRUCTURED, **kwargs)
    return response.status_code, json.loads(response.get_data())


def kept(h: Harness) -> list[Any]:
    with h.romancy.storage.engine.connect() as conn:
        return list(conn.execute(sa.select(events).order_by(events.c.id)).all())


def call(app: Any, environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Call the WSGI app with a hand-made environ (headers a test client would fix)."""
    answered: list[str] = []
    body = b"".join(
        app({"REQUEST_METHOD": "POST", **environ}, lambda status, _: answered.append(status))
    )
    return int(answered[0].split()[0]), json.loads(body)


class EndlessBody:
    """A request body that never ends; counts what the app reads from it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        assert size is not None and size >= 0, "an unbounded read of the request body"
        self.read_bytes += size
        return b" " * size


# -- who may send -------------------------------------------------------------------------


def detached_romancy() -> Romancy:
    return Romancy(Celery("intake-config"), database_url="sqlite://")  # nothing connects


def test_an_intake_must_say_who_may_send() -> None:
    romancy = detached_romancy()
    with pytest.raises(ConfigurationError, match=r"authorize=.*allow_anonymous=True"):
        CloudEventsIntake(romancy)
    with pytest.raises(ConfigurationError, match="not both"):
        CloudEventsIntake(romancy, authorize=lambda environ, event: True, allow_anonymous=True)
    with pytest.raises(ConfigurationError, match="callable"):
        CloudEventsIntake(romancy, authorize="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_body_bytes"):
        CloudEventsIntake(romancy, allow_anonymous=True, max_body_bytes=0)
    assert CloudEventsIntake(romancy, allow_anonymous=True).max_body_bytes == LIMIT


def test_authorize_sees_the_event_and_the_raw_body_and_refuses_with_401_or_403(
    harness: Harness,
) -> None:
    seen: list[tuple[bytes, str]] = []

    def authorize(environ: dict[str, Any], event: dict[str, Any]) -> bool:
        seen.append((environ["romancy.body"], event["type"]))
        token = environ.get("HTTP_AUTHORIZATION")
        if token is None:
            raise NotAuthenticatedError("send a bearer token", challenge="Bearer")
        return bool(token == "Bearer good")

    intake = CloudEventsIntake(harness.romancy, authorize=authorize)
    body = json.dumps(cloud_event())
    response = Client(intake).post("/", data=body, content_type=STRUCTURED)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(response.get_data()) == {"error": "send a bearer token"}
    assert post(intake, body, headers={"Authorization": "Bearer forged"}) == (
        403,
        {"error": "not authorized"},
    )
    assert kept(harness) == []
    assert post(intake, body, headers={"Authorization": "Bearer good"})[0] == 202
    assert len(kept(harness)) == 1
    assert seen == [(body.encode(), "payment.received")] * 3


def test_hmac_authorizer_accepts_only_a_body_signed_with_the_secret(harness: Harness) -> None:
    intake = CloudEventsIntake(harness.romancy, authorize=hmac_authorizer("s3cret"))
    body = json.dumps(cloud_event()).encode()
    forged = json.dumps(cloud_event(data={"order_id": "ORD-1", "amount": 999})).encode()

    unsigned = Client(intake).post("/", data=body, content_type=STRUCTURED)
    assert unsigned.status_code == 401
    assert unsigned.headers["WWW-Authenticate"] == 'HMAC-SHA256 header="X-Romancy-Signature"'
    for wrong in (signature("other", body), signature("s3cret", body)[:-1], "sha256=", "junk"):
        assert post(intake, body, headers={"X-Romancy-Signature": wrong})[0] == 403
    # A signature is for one body: it does not carry over to another.
    assert (
        post(intake, forged, headers={"X-Romancy-Signature": signature("s3cret", body)})[0] == 403
    )
    assert kept(harness) == []
    status, answer = post(intake, body, headers={"X-Romancy-Signature": signature("s3cret", body)})
    assert (status, answer) == (202, {"accepted": "evt-1", "duplicate": False})
    assert [row.data for row in kept(harness)] == [{"order_id": "ORD-1", "amount": 1.5}]
    with pytest.raises(ConfigurationError, match="secret"):
        hmac_authorizer("")


def test_the_intake_mounts_in_flask_behind_the_apps_own_check(harness: Harness) -> None:
    """The README's Flask recipes, run: a view with the app's own check, and the HMAC
    intake mounted beside the app."""
    flask_app = Flask("shop")

    def token_ok(environ: dict[str, Any], event: dict[str, Any]) -> bool:
        # Runs inside the Flask request: anything the app knows (session, user) is here.
        return request.headers.get("X-Events-Token") == "t0ken"

    token_intake = CloudEventsIntake(harness.romancy, authorize=token_ok)

    @flask_app.post("/events")
    def events_view() -> Response:
        return Response.from_app(token_intake, request.environ)

    flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app,
        {"/signed-events": CloudEventsIntake(harness.romancy, authorize=hmac_authorizer("k"))},
    )
    client = flask_app.test_client()
    first = json.dumps(cloud_event(id="evt-flask-1"))
    assert client.post("/events", data=first, content_type=STRUCTURED).status_code == 403
    response = client.post(
        "/events", data=first, content_type=STRUCTURED, headers={"X-Events-Token": "t0ken"}
    )
    assert response.status_code == 202
    second = json.dumps(cloud_event(id="evt-flask-2")).encode()
    response = client.post(
        "/signed-events",
        data=second,
        content_type=STRUCTURED,
        headers={"X-Romancy-Signature": signature("k", second)},
    )
    assert response.status_code == 202
    assert len(kept(harness)) == 2


# -- how much -----------------------------------------------------------------------------


def test_a_body_announced_over_the_limit_is_refused_before_it_is_read(harness: Harness) -> None:
    body = EndlessBody()
    status, answer = call(
        open_intake(harness),
        {"CONTENT_TYPE": STRUCTURED, "CONTENT_LENGTH": "2000000000", "wsgi.input": body},
    )
    assert status == 413
    assert "2000000000" in answer["error"] and str(LIMIT) in answer["error"]
    assert body.read_bytes == 0
    assert kept(harness) == []


def test_a_body_without_a_length_is_read_no_further_than_the_limit(harness: Harness) -> None:
    body = EndlessBody()
    status, answer = call(
        open_intake(harness, max_body_bytes=1000),
        {"CONTENT_TYPE": STRUCTURED, "wsgi.input": body, "wsgi.input_terminated": True},
    )
    assert status == 413 and "1000 bytes" in answer["error"]
    assert body.read_bytes == 1001
    assert kept(harness) == []


def test_a_body_longer_than_its_content_length_is_read_only_as_far_as_declared(
    harness: Harness,
) -> None:
    event = json.dumps(cloud_event()).encode()
    stream = io.BytesIO(event + b"x" * 5_000_000)
    status, _ = call(
        open_intake(harness),
        {"CONTENT_TYPE": STRUCTURED, "CONTENT_LENGTH": str(len(event)), "wsgi.input": stream},
    )
    assert status == 202
    assert stream.tell() == len(event)
    assert len(kept(harness)) == 1


def test_a_body_over_the_limit_is_refused_through_a_real_client(harness: Harness) -> None:
    event = json.dumps(cloud_event(data="x" * 2000))
    status, answer = post(open_intake(harness, max_body_bytes=1000), event)
    assert status == 413 and "limit of 1000 bytes" in answer["error"]
    assert kept(harness) == []


@pytest.mark.parametrize(
    ("declared", "status"),
    [
        ("1e20", 400),
        ("-5", 400),
        ("abc", 400),
        ("12 3", 400),
        ("+5", 400),
        ("0x10", 400),
        ("\u0663", 400),  # ARABIC-INDIC DIGIT THREE: a digit to str.isdigit, not to HTTP
        pytest.param("9" * 5000, 413, id="5000-digits"),  # an integer, absurdly large
        (str(LIMIT + 1), 413),
    ],
)
def test_a_content_length_that_is_not_a_plain_number_is_a_bad_request(
    harness: Harness, declared: str, status: int
) -> None:
    body = EndlessBody()
    got, answer = call(
        open_intake(harness),
        {"CONTENT_TYPE": STRUCTURED, "CONTENT_LENGTH": declared, "wsgi.input": body},
    )
    assert got == status
    assert "Content-Length" in answer["error"]
    assert body.read_bytes == 0
    assert kept(harness) == []


def test_send_event_refuses_data_larger_than_max_payload_bytes(harness: Harness) -> None:
    data = {"blob": "x" * LIMIT}
    with pytest.raises(PayloadTooLargeError) as refused:
        harness.romancy.send_event("big", data, correlation_id="C-1")
    assert isinstance(refused.value, InvalidArgumentsError)
    assert str(refused.value) == (
        f"event data is {LIMIT + 11} bytes as JSON; the limit (romancy_max_payload_bytes) "
        f"is {LIMIT}"
    )
    # Over the payload cap but under the body cap: the intake answers 413 too.
    status, answer = post(open_intake(harness, max_body_bytes=4 * LIMIT), cloud_event(data=data))
    assert status == 413 and "romancy_max_payload_bytes" in answer["error"]
    assert kept(harness) == []
    assert harness.romancy.send_event("big", {"blob": "x" * (LIMIT - 11)}, correlation_id="C-1")


def test_max_payload_bytes_is_a_setting(database_url: str, tmp_path: Path) -> None:
    h = Harness(database_url, tmp_path, romancy_max_payload_bytes=100)
    try:
        with pytest.raises(PayloadTooLargeError, match=r"limit .* is 100$"):
            h.romancy.send_event("t", "x" * 100, correlation_id="C")
        assert kept(h) == []
    finally:
        h.close()


# -- what is one event ----------------------------------------------------------------------


def test_the_same_event_id_for_another_target_or_type_is_another_event(harness: Harness) -> None:
    intake = open_intake(harness)
    for attributes in (
        {},
        {"romancycorrelationid": "ORD-2"},
        {"type": "payment.refunded"},
    ):
        assert post(intake, cloud_event(**attributes)) == (
            202,
            {"accepted": "evt-1", "duplicate": False},
        )
    assert [(row.event_type, row.correlation_id) for row in kept(harness)] == [
        ("payment.received", "ORD-1"),
        ("payment.received", "ORD-2"),
        ("payment.refunded", "ORD-1"),
    ]
    found = harness.romancy.storage.find_event("payment.received", "any", "ORD-2")
    assert found is not None and found.correlation_id == "ORD-2"


def test_a_repeat_is_a_duplicate_and_a_reused_id_with_other_data_is_a_conflict(
    harness: Harness,
) -> None:
    intake = open_intake(harness)
    assert post(intake, cloud_event())[1]["duplicate"] is False
    # The same data with its keys in another order is the same event.
    reordered = cloud_event(data={"amount": 1.5, "order_id": "ORD-1"})
    assert post(intake, reordered) == (202, {"accepted": "evt-1", "duplicate": True})
    status, answer = post(intake, cloud_event(data={"order_id": "ORD-1", "amount": 99}))
    assert status == 409
    assert "already received for this target and type with other data" in answer["error"]
    assert len(kept(harness)) == 1


def test_a_repeat_after_its_instance_ended_is_still_a_duplicate(harness: Harness) -> None:
    instance_id = harness.romancy.start_workflow("await_payment", "END-1")
    event = cloud_event(romancycorrelationid=None, romancyinstanceid=instance_id)
    intake = open_intake(harness)
    assert post(intake, event)[1]["duplicate"] is False
    set_instance(harness.romancy.storage, instance_id, status="completed")
    assert post(intake, event) == (202, {"accepted": "evt-1", "duplicate": True})
    assert (
        post(
            intake,
            cloud_event(id="evt-2", romancycorrelationid=None, romancyinstanceid=instance_id),
        )[0]
        == 409
    )
    assert len(kept(harness)) == 1


def at_revision(url: str, revision: str) -> sa.Engine:
    """An engine on ``url`` whose schema is exactly at ``revision``."""
    engine = open_store(url)._create_engine()
    upgrade(engine, revision)  # from nothing (SQLite), or a no-op at head
    with engine.begin() as conn:
        if current_revision(conn) != revision:
            command.downgrade(alembic_config(conn), revision)
    return engine


def test_events_kept_before_the_upgrade_are_rekeyed_and_still_known(harness: Harness) -> None:
    engine = at_revision(harness.database_url, "0004")
    old_columns = sa.table(
        "romancy_events",
        *(sa.column(name) for name in ("event_type", "correlation_id", "dedupe_key")),
        sa.column("data", sa.JSON()),
        sa.column("received_at", sa.DateTime()),
    )
    with engine.begin() as conn:
        conn.execute(
            sa.insert(old_columns).values(
                event_type="payment.received",
                correlation_id="ORD-1",
                data={"order_id": "ORD-1", "amount": 1.5},
                dedupe_key="/payments evt-1",  # the key before 0005: "<source> <id>"
                received_at=utcnow().replace(tzinfo=None),
            )
        )
    upgrade(engine)
    engine.dispose()
    [row] = kept(harness)
    sender_id = json.dumps(["/payments", "evt-1"])
    assert row.dedupe_key == event_key(sender_id, "payment.received", None, "ORD-1")
    assert row.data_hash == payload_hash({"order_id": "ORD-1", "amount": 1.5})
    intake = open_intake(harness)
    assert post(intake, cloud_event()) == (202, {"accepted": "evt-1", "duplicate": True})
    assert post(intake, cloud_event(data=None))[0] == 409
    assert len(kept(harness)) == 1


# -- what is refused --------------------------------------------------------------------------


NESTED = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (cloud_event(romancyinstanceid=["a"], romancycorrelationid=None), "must be a string"),
        (cloud_event(romancyinstanceid={"a": 1}, romancycorrelationid=None), "must be a string"),
        (cloud_event(romancyinstanceid=7, romancycorrelationid=None), "must be a string"),
        (cloud_event(romancycorrelationid=5.5), "must be a string"),
        (cloud_event(romancycorrelationid=["ORD-1"]), "must be a string"),
        (
            cloud_event(romancycorrelationid=""),
            "correlation_id must be 1 to 200 characters long, not 0",
        ),
        (cloud_event(type="t" * 201), "event_type must be 1 to 200 characters long, not 201"),
        (cloud_event(romancycorrelationid="c" * 201), "correlation_id must be 1 to 200 characters"),
        (
            cloud_event(romancyinstanceid="i" * 101, romancycorrelationid=None),
            "instance_id must be 1 to 100 characters long, not 101",
        ),
        (cloud_event(type="pay\u0000ment"), "event_type must not contain control characters"),
        (cloud_event(romancycorrelationid="ORD\u00001"), "correlation_id must not contain control"),
        (
            cloud_event(romancyinstanceid="i\u0000", romancycorrelationid=None),
            "instance_id must not contain control characters",
        ),
        (cloud_event(type="pay\ud800"), "event_type must not contain control characters"),
        (cloud_event(romancycorrelationid="ORD-1", romancyinstanceid="x"), "exactly one of"),
        (cloud_event(data=float("nan")), "float nan is not valid JSON"),
    ],
)
def test_a_bad_event_is_a_400_with_a_message_and_writes_nothing(
    harness: Harness, event: dict[str, Any], message: str
) -> None:
    body = json.dumps({k: v for k, v in event.items() if v is not None})
    status, answer = post(open_intake(harness), body)
    assert status == 400
    assert message in answer["error"]
    assert kept(harness) == []


@pytest.mark.parametrize("depth", [3000, 100_000])
def test_json_nested_thousands_deep_is_a_400(harness: Harness, depth: int) -> None:
    data = "[" * depth + "]" * depth
    structured = '{"specversion": "1.0", "id": "x", "source": "s", "type": "t", "data": ' + data
    for body, headers, content_type in (
        (structured + "}", {}, STRUCTURED),
        (
            data,
            {"ce-specversion": "1.0", "ce-id": "x", "ce-source": "s", "ce-type": "t"},
            "application/json",
        ),
    ):
        response = Client(open_intake(harness)).post(
            "/", data=body, content_type=content_type, headers=headers
        )
        assert response.status_code == 400
        assert "nested too deeply" in json.loads(response.get_data())["error"]
    assert kept(harness) == []


def test_a_binary_mode_event_with_an_empty_target_header_is_a_400(harness: Harness) -> None:
    response = Client(open_intake(harness)).post(
        "/",
        data="{}",
        content_type="application/json",
        headers={
            "ce-specversion": "1.0",
            "ce-id": "x",
            "ce-source": "s",
            "ce-type": "t",
            "ce-romancyinstanceid": "",
        },
    )
    assert response.status_code == 400
    assert (
        "instance_id must be 1 to 100 characters long, not 0"
        in json.loads(response.get_data())["error"]
    )
    assert kept(harness) == []


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ({"event_type": 5, "correlation_id": "C"}, "event_type must be a string, not int"),
        ({"event_type": "t", "correlation_id": 5}, "correlation_id must be a string, not int"),
        ({"event_type": "t", "instance_id": ["x"]}, "instance_id must be a string, not list"),
        ({"event_type": "", "correlation_id": "C"}, "event_type must be 1 to 200 characters"),
        ({"event_type": "t" * 201, "correlation_id": "C"}, "event_type must be 1 to 200 char"),
        ({"event_type": "t", "correlation_id": "c" * 201}, "correlation_id must be 1 to 200 c"),
        ({"event_type": "t", "instance_id": "i" * 101}, "instance_id must be 1 to 100 characters"),
        ({"event_type": "t\x00", "correlation_id": "C"}, "event_type must not contain control"),
        ({"event_type": "t", "correlation_id": "C\x00"}, "correlation_id must not contain control"),
        ({"event_type": "t", "instance_id": "\x00"}, "instance_id must not contain control"),
        (
            {"event_type": "t", "correlation_id": "\udc80"},
            "correlation_id must not contain control",
        ),
    ],
)
def test_send_event_checks_its_address_before_writing(
    harness: Harness, address: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgumentsError, match=message):
        harness.romancy.send_event(data={"a": 1}, **address)
    assert kept(harness) == []


def test_send_event_checks_data_against_data_type(harness: Harness) -> None:
    with pytest.raises(InvalidArgumentsError, match=r"data\.order_id: expected str, got int 5"):
        harness.romancy.send_event(
            "payment.received",
            {"order_id": 5, "amount": 1.0},
            correlation_id="C",
            data_type=Payment,
        )
    with pytest.raises(InvalidArgumentsError, match="missing field 'amount'"):
        harness.romancy.send_event(
            "payment.received", {"order_id": "C"}, correlation_id="C", data_type=Payment
        )
    assert kept(harness) == []
    assert harness.romancy.send_event(
        "payment.received", Payment("C", 2.0), correlation_id="C", data_type=Payment
    )
    assert [row.data for row in kept(harness)] == [{"order_id": "C", "amount": 2.0}]


@pytest.mark.parametrize("text", ["a\x00b", "lone \ud800 surrogate"])
def test_event_data_that_no_database_can_store_is_refused(harness: Harness, text: str) -> None:
    """The serializer refuses NUL (PostgreSQL cannot use it in JSON text) and lone
    surrogates (no UTF-8): as a 400 from the intake, as SerializationError from Python."""
    status, answer = post(open_intake(harness), cloud_event(data={"note": ["ok", text]}))
    assert status == 400
    assert "data['note'][1]" in answer["error"] and "cannot be stored" in answer["error"]
    with pytest.raises(SerializationError, match="cannot be stored"):
        harness.romancy.send_event("t", {"note": text}, correlation_id="C")
    assert kept(harness) == []


# -- how long -----------------------------------------------------------------------------


def age(h: Harness, correlation_id: str, by: timedelta, consumed: bool = False) -> None:
    """Make the events kept for ``correlation_id`` look received ``by`` ago."""
    values: dict[str, Any] = {"received_at": utcnow() - by}
    if consumed:
        values |= {"consumed_by": "someone", "consumed_at": utcnow() - by}
    with h.romancy.storage.transaction() as conn:
        conn.execute(
            sa.update(events).where(events.c.correlation_id == correlation_id).values(**values)
        )


def test_the_timer_job_purges_events_past_their_retention(harness: Harness) -> None:
    for correlation_id in ("nobody-old", "nobody-new", "consumed-old", "nobody-6-days"):
        harness.romancy.send_event("t", None, correlation_id=correlation_id)
    age(harness, "nobody-old", timedelta(days=8))
    age(harness, "consumed-old", timedelta(days=7, minutes=1), consumed=True)
    age(harness, "nobody-6-days", timedelta(days=6))
    harness.romancy.fire_due()  # what beat's romancy.fire_timers runs
    assert sorted(row.correlation_id for row in kept(harness)) == ["nobody-6-days", "nobody-new"]


def test_event_retention_is_a_setting(database_url: str, tmp_path: Path) -> None:
    h = Harness(database_url, tmp_path, romancy_event_retention=60)
    try:
        for correlation_id in ("two-minutes", "half-a-minute"):
            h.romancy.send_event("t", None, correlation_id=correlation_id)
        age(h, "two-minutes", timedelta(minutes=2))
        age(h, "half-a-minute", timedelta(seconds=30))
        h.romancy.fire_due()
        assert [row.correlation_id for row in kept(h)] == ["half-a-minute"]
    finally:
        h.close()
