"""Celery interface to notifications: one try per message, Celery's retry with backoff for the next."""

from __future__ import annotations

import random

from celery import shared_task
from django.conf import settings

from notifications import services


def retry_delay(retries: int) -> float:
    """Seconds before retry ``retries + 1``: doubling from TASKHUB_NOTIFY_RETRY_DELAY, at most TASKHUB_MAX_ETA, jittered.

    Capped so that no long ETA sits in the broker; the jitter (up to a
    tenth) keeps many failed deliveries to one receiver from coming back at once.
    """
    delay = min(settings.TASKHUB_NOTIFY_RETRY_DELAY * 2**retries, settings.TASKHUB_MAX_ETA)
    return delay * random.uniform(0.9, 1.0)


@shared_task(bind=True, name="notifications.deliver", ignore_result=True, acks_late=True, max_retries=None)
def deliver(self, channel_id: int, execution_id: int, event: str, kind: str) -> bool:
    retries = self.request.retries
    last = retries >= settings.TASKHUB_NOTIFY_RETRIES
    try:
        return services.deliver(
            channel_id,
            execution_id,
            event,
            kind,
            # Celery's retry keeps the message's id: one key for every try of this notification.
            key=self.request.id or "",
            attempt=retries + 1,
            last=last,
        )
    except services.DeliveryFailed as exc:
        raise self.retry(exc=exc, countdown=retry_delay(retries), max_retries=settings.TASKHUB_NOTIFY_RETRIES)
