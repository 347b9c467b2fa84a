import os

from celery import Celery

from celery_romancy.contrib.django import DjangoRomancy

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
romancy = DjangoRomancy(app)
