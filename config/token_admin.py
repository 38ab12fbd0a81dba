"""The API token admin: a token is shown in full once, to the person who creates it, and never again.

Replaces the admin rest_framework.authtoken registers, which lists every key
in full to anyone who may merely view tokens, and lets them filter the list
on the key through the URL (``?key__startswith=…``), an oracle for it.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest
from rest_framework.authtoken.admin import TokenAdmin as DRFTokenAdmin
from rest_framework.authtoken.models import TokenProxy

SHOWN_CHARS = 4
USER_LOOKUPS = frozenset({"user", "user__exact", "user__id__exact", "user_id", "user_id__exact"})


def key_prefix(key: str) -> str:
    return f"{key[:SHOWN_CHARS]}…" if key else ""


class TokenAdmin(DRFTokenAdmin):
    list_display = ("key_start", "user", "created")
    list_filter = ("created",)
    fields = ("user",)
    # No ordering by key either: sorting tokens around a known one reveals where the others fall.
    sortable_by = ("user", "created")

    @admin.display(description="Key")
    def key_start(self, obj: TokenProxy) -> str:
        return key_prefix(obj.key)

    def get_fields(self, request: HttpRequest, obj: TokenProxy | None = None):
        return ("user",) if obj is None else ("user", "key_start", "created")

    def get_readonly_fields(self, request: HttpRequest, obj: TokenProxy | None = None):
        # A token belongs to its user for life: change means replace (delete, then add).
        return () if obj is None else ("user", "key_start", "created")

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # Only the filters the list offers (created) and a user by id; never the key, by whatever path.
        allowed = lookup.split("__")[0] == "created" or lookup in USER_LOOKUPS
        return allowed and super().lookup_allowed(lookup, value, request)

    def save_model(self, request: HttpRequest, obj: TokenProxy, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            self.message_user(
                request,
                f"The key of {obj.user}'s new token is {obj.key} — copy it now: it is not shown again.",
                messages.WARNING,
            )


def masked_str(token: TokenProxy) -> str:
    return f"{key_prefix(token.key)} ({token.user})"


def install() -> None:
    """Put this admin in place of rest_framework.authtoken's (call after admin autodiscovery)."""
    # The admin prints str(token) in titles, breadcrumbs, messages and its log,
    # and a token's str() is its key. TokenProxy exists only for the admin, so
    # its str() shows the start of the key instead (tests/test_security_api.py
    # fails if a page still shows the key).
    TokenProxy.__str__ = masked_str
    if admin.site.is_registered(TokenProxy):
        admin.site.unregister(TokenProxy)
    admin.site.register(TokenProxy, TokenAdmin)
