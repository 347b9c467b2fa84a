import os

SECRET_KEY = "tests-only"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "celery_romancy.contrib.django",  # romancy_migrate, and the admin's workflow instances
    "shop",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ROOT_URLCONF = "proj.urls"
STATIC_URL = "static/"
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["SHOP_SQLITE_PATH"]}
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "Asia/Tokyo"  # not UTC: the admin must show the history's UTC times in it
CELERY_BROKER_URL = os.environ["SHOP_BROKER_URL"]
CELERY_TASK_DEFAULT_QUEUE = os.environ["SHOP_QUEUE"]
CELERY_ROMANCY_LEASE_TIMEOUT = 120
# The history in another database than Django's; unset, DjangoRomancy keeps it in
# DATABASES["default"].
if os.environ.get("SHOP_HISTORY_URL"):
    CELERY_ROMANCY_DATABASE_URL = os.environ["SHOP_HISTORY_URL"]
