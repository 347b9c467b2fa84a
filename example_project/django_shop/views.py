"""POST /orders starts the order saga after commit; GET /orders/<order_id> shows it."""

import json

from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from celery_romancy import UnknownInstanceError
from celery_romancy.contrib.django import start_workflow_on_commit
from celery_romancy.contrib.status import instance_status
from example_project.celery_app import romancy
from example_project.orders import order_processing
from example_project.shop import order_from_json

from .models import Checkout


# A JSON API for other programs, which hold no CSRF token: Django's CSRF middleware
# would answer 403. Authenticate such callers another way in a real shop.
@csrf_exempt
@require_POST
def checkout(request: HttpRequest) -> JsonResponse:
    try:
        order = order_from_json(json.loads(request.body))
    except ValueError as exc:  # bad JSON, or not an order
        return JsonResponse({"error": str(exc)}, status=400)
    try:
        with transaction.atomic():
            # The instance id now, so it is saved with the order; the saga starts when
            # this transaction commits, and never if it rolls back.
            instance_id = start_workflow_on_commit(romancy, order_processing, order)
            Checkout.objects.create(order_id=order.order_id, instance_id=instance_id)
    except IntegrityError:  # rolled back: no saga started
        return JsonResponse({"error": f"order {order.order_id} was already placed"}, status=409)
    return JsonResponse({"order_id": order.order_id, "instance_id": instance_id}, status=202)


@require_GET
def order_status(request: HttpRequest, order_id: str) -> JsonResponse:
    placed = Checkout.objects.filter(order_id=order_id).first()
    if placed is None:
        return JsonResponse({"error": f"no order {order_id}"}, status=404)
    try:
        instance = romancy.get_instance(placed.instance_id)
    except UnknownInstanceError:  # saved, but its start after the commit failed
        return JsonResponse({"error": f"order {order_id} has no saga"}, status=404)
    return JsonResponse({"order_id": order_id, **instance_status(instance)})


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    Checkout.objects.exists()  # the shop's database
    romancy.find_instances(limit=1)  # the workflow history
    return JsonResponse({"ok": True})
