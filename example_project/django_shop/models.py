from django.db import models


class Checkout(models.Model):
    """An order placed through the shop, and the saga instance that processes it."""

    order_id = models.CharField(max_length=100, unique=True)
    instance_id = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
