"""System checks for TaskHub's settings: misconfigurations that would lose or repeat work."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def check_liveness_settings(app_configs=None, **kwargs) -> list:
    errors = []
    if settings.TASKHUB_HEARTBEAT * 2 > settings.TASKHUB_LOST_AFTER:
        errors.append(
            Error(
                f"TASKHUB_HEARTBEAT ({settings.TASKHUB_HEARTBEAT:g}s) must be at most half of "
                f"TASKHUB_LOST_AFTER ({settings.TASKHUB_LOST_AFTER:g}s).",
                hint="Otherwise healthy running executions would be marked lost between two heartbeats.",
                id="taskhub.E001",
            )
        )
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout")
    if visibility is not None and settings.TASKHUB_MAX_ETA >= visibility:
        errors.append(
            Error(
                f"TASKHUB_MAX_ETA ({settings.TASKHUB_MAX_ETA:g}s) must be below the broker's visibility timeout "
                f"({visibility:g}s).",
                hint="A countdown longer than the visibility timeout is delivered twice by Redis. "
                "Lower TASKHUB_MAX_ETA or raise TASKHUB_VISIBILITY_TIMEOUT.",
                id="taskhub.E002",
            )
        )
    return errors


@register(deploy=True)
def check_single_host_broker(app_configs=None, **kwargs) -> list:
    database = settings.DATABASE_URL.split(":", 1)[0]
    if settings.BROKER_SCHEME == "filesystem" and database != "sqlite":
        return [
            Warning(
                f"The filesystem broker serves one machine only, but the database ({database}) can be shared.",
                hint="Set CELERY_BROKER_URL=redis://… so workers on other hosts receive work.",
                id="taskhub.W001",
            )
        ]
    return []
