from django.urls import path

from celery_romancy.contrib.django.views import InstanceStatusView

from . import views

urlpatterns = [
    path("orders", views.checkout),
    path("orders/<str:order_id>", views.order_status),
    path("health", views.health),
    path("sagas/<path:instance_id>", InstanceStatusView.as_view()),
]
