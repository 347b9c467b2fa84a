from django.urls import path

from . import views

urlpatterns = [
    path("orders", views.checkout),
    path("orders/<str:order_id>", views.order_status),
    path("health", views.health),
]
