"""One herald client per process (it holds a connection pool and is
thread-safe), built from the settings on first use."""

from functools import lru_cache

from django.conf import settings

from herald_client import Herald


@lru_cache(maxsize=4)
def _client(url: str, api_key: str) -> Herald:
    return Herald(url, api_key, timeout=5, retries=3)


def get_client() -> Herald:
    return _client(settings.HERALD_URL, settings.HERALD_API_KEY)
