"""API throttles whose rates come from the settings when a request arrives.

DRF's own classes copy the rates once, at import; these read
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] each time, so a changed setting
applies without a restart of the interpreter (and tests can set their own).
"""

from __future__ import annotations

from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle


class AnonThrottle(AnonRateThrottle):
    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)


class UserThrottle(UserRateThrottle):
    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
