"""What the Django and the Flask views share: reading an order from a request's JSON."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from example_project.orders import OrderInput, OrderItem


class BadOrderError(ValueError):
    """The request does not describe an order."""


def order_from_json(payload: Any) -> OrderInput:
    """``{"order_id", "customer_email", "shipping_address", "items": [{"item_id",
    "quantity", "price"}]}`` -> ``OrderInput``; ``BadOrderError`` says what is wrong."""
    try:
        items = [
            OrderItem(str(i["item_id"]), int(i["quantity"]), Decimal(str(i["price"])))
            for i in payload["items"]
        ]
        order = OrderInput(
            order_id=str(payload["order_id"]),
            customer_email=str(payload["customer_email"]),
            items=items,
            shipping_address=str(payload["shipping_address"]),
        )
    except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
        raise BadOrderError(f"not an order: {exc!r}") from None
    if not items:
        raise BadOrderError("an order needs at least one item")
    return order
