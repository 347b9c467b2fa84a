import os

SECRET_KEY = "tests-only"
INSTALLED_APPS = ["celery_romancy.contrib.django", "shop"]
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["SHOP_SQLITE_PATH"]}
}
USE_TZ = True
CELERY_BROKER_URL = os.environ["SHOP_BROKER_URL"]
CELERY_TASK_DEFAULT_QUEUE = os.environ["SHOP_QUEUE"]
CELERY_ROMANCY_LEASE_TIMEOUT = 120
