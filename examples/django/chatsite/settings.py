"""Settings of the herald chat example: the least Django needs, plus where
herald is.

Environment (names without the HERALD_ prefix on purpose: herald refuses to
start when it sees an HERALD_* variable it does not know, and this app often
runs in the same shell):

- APP_HERALD_URL: herald's ingest API (``herald dev``'s address), default
  http://127.0.0.1:8080
- APP_HERALD_API_KEY: the key herald was started with (``--api-key``),
  default devkey
- CHAT_DB: SQLite file for the app's own messages, default db.sqlite3 here
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = ["chat"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "chatsite.urls"
WSGI_APPLICATION = "chatsite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("CHAT_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

HERALD_URL = os.environ.get("APP_HERALD_URL", "http://127.0.0.1:8080")
HERALD_API_KEY = os.environ.get("APP_HERALD_API_KEY", "devkey")

LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"chat": {"handlers": ["console"], "level": "INFO"}},
}
