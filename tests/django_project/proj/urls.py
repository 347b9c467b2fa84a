from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("romancy/", include("celery_romancy.contrib.django.urls")),  # the dashboard
]
