"""Settings for the example shop, from the environment (see docker-compose.yml).

The Celery app is configured from the environment too (``example_project/celery_app.py``)
because the Flask app and the workers share it. A Django-only project would rather
write ``app.config_from_object("django.conf:settings", namespace="CELERY")`` and
``DjangoRomancy(app)``: see the README's Django section.
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "celery_romancy.contrib.django",  # manage.py romancy_migrate
    "example_project.django_shop",
]
# Django's defaults, less sessions, auth and messages (a JSON API has no logins):
# CSRF checks stay on, so the checkout view shows how a JSON POST passes them.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "example_project.django_shop.urls"
WSGI_APPLICATION = "example_project.django_shop.wsgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("POSTGRES_DB", "shop"),
        "USER": os.environ.get("POSTGRES_USER", "postgres"),
        "PASSWORD": os.environ.get("POSTGRES_PASSWORD", ""),
        "HOST": os.environ.get("POSTGRES_HOST", "127.0.0.1"),
        "PORT": os.environ.get("POSTGRES_PORT", "5432"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
