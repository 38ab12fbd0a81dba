"""A limit on failed admin logins: after too many for one user name, further attempts wait.

Failures are counted per user name (not per address: behind a proxy every
client has the proxy's address) in Django's cache, in a fixed window of
TASKHUB_LOGIN_FAILURE_WINDOW seconds that starts with the first failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.core.cache import cache
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse

KEY_PREFIX = "taskhub:login-failures:"


def _key(username: str) -> str:
    # Hashed so that any user name, however long or odd, makes a valid cache key.
    digest = hashlib.sha256(username.strip().casefold().encode()).hexdigest()
    return KEY_PREFIX + digest


def failures(username: str) -> int:
    return cache.get(_key(username), 0)


@receiver(user_login_failed, dispatch_uid="taskhub-count-login-failure")
def count_failure(sender: object, credentials: dict, request: HttpRequest | None = None, **kwargs: object) -> None:
    if request is None:
        return  # not a login through the web (a management command, a test helper)
    key = _key(str(credentials.get("username", "")))
    # add() starts the window only if no count exists; incr() then counts within it.
    cache.add(key, 0, timeout=settings.TASKHUB_LOGIN_FAILURE_WINDOW)
    try:
        cache.incr(key)
    except ValueError:
        # The window ended between add() and incr(): start a new one with this failure.
        cache.add(key, 1, timeout=settings.TASKHUB_LOGIN_FAILURE_WINDOW)


def throttled(login_view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap a login view so that a POST for a user name over the limit is answered 429 without checking it."""

    def view(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if (
            request.method == "POST"
            and failures(request.POST.get("username", "")) >= settings.TASKHUB_LOGIN_FAILURE_LIMIT
        ):
            window = int(settings.TASKHUB_LOGIN_FAILURE_WINDOW)
            response = HttpResponse(
                f"Too many failed logins for this user name; try again in {window} seconds.\n",
                status=429,
                content_type="text/plain; charset=utf-8",
            )
            response["Retry-After"] = str(window)
            return response
        return login_view(request, *args, **kwargs)

    return view
