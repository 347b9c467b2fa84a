"""The Flask shop: POST /orders starts the order saga, GET /orders/<id> shows it,
GET /sagas/<instance id> is the ready-made status endpoint (steps, timings, compensations),
and /romancy/ is the dashboard of every saga, for the shop's operators only (HTTP basic
auth with SHOP_OPERATOR_TOKEN as the password).

    flask --app example_project.flask_shop:create_app run

The instance id is derived from the order id, so a client that retries its POST
(a timeout, a double click) gets the same saga back instead of a second charge.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, request

from celery_romancy import UnknownInstanceError
from celery_romancy.contrib.dashboard import Request as DashboardRequest
from celery_romancy.contrib.flask import (
    FlaskRomancy,
    current_romancy,
    dashboard_blueprint,
    status_blueprint,
)
from celery_romancy.contrib.status import instance_status
from example_project.celery_app import romancy
from example_project.orders import order_processing
from example_project.shop import BadOrderError, order_from_json

romancy_ext = FlaskRomancy(romancy)


def operators_only() -> Response | None:
    """The dashboard shows every saga's data and acts on them: only the shop's operators
    get in (HTTP basic auth, any user name, SHOP_OPERATOR_TOKEN as the password)."""
    token = os.environ.get("SHOP_OPERATOR_TOKEN", "")
    given = request.authorization.password if request.authorization else None
    if token and given and hmac.compare_digest(given.encode(), token.encode()):
        return None
    return Response("operators only", 401, {"WWW-Authenticate": 'Basic realm="sagas"'})


def operator(dashboard_request: DashboardRequest) -> str | None:
    """Who acts (recorded with each action): the operator ``operators_only`` let in."""
    signed_in = dashboard_request.native.authorization  # Flask's request
    return signed_in.username if signed_in and signed_in.username else None


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    # No ROMANCY_* settings here: they live on the Celery app (celery_app.py, from the
    # environment), which the worker imports too; it never calls create_app.
    app.config.update(config or {})
    romancy_ext.init_app(app)
    app.register_blueprint(status_blueprint(), url_prefix="/sagas")  # GET /sagas/<id>
    dashboard = dashboard_blueprint(authorize=operator, flower_url=os.environ.get("FLOWER_URL"))
    dashboard.before_request(operators_only)  # every page and every action
    app.register_blueprint(dashboard, url_prefix="/romancy")  # the dashboard: /romancy/

    @app.post("/orders")
    def checkout() -> tuple[dict[str, Any], int]:
        try:
            order = order_from_json(request.get_json(force=True))
        except BadOrderError as exc:
            return {"error": str(exc)}, 400
        instance_id = current_romancy().start_workflow(
            order_processing, order, instance_id=f"order-{order.order_id}"
        )
        return {"order_id": order.order_id, "instance_id": instance_id}, 202

    @app.get("/orders/<instance_id>")
    def order_status(instance_id: str) -> tuple[dict[str, Any], int]:
        try:
            instance = current_romancy().get_instance(instance_id)
        except UnknownInstanceError:
            return {"error": f"no order saga {instance_id}"}, 404
        return instance_status(instance), 200

    @app.get("/health")
    def health() -> dict[str, bool]:
        current_romancy().find_instances(limit=1)  # the workflow history answers
        return {"ok": True}

    return app
