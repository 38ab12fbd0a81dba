"""Who hears about a task's runs (Channel) and what each try of telling them did (Delivery)."""

from __future__ import annotations

import secrets

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.db import models
from django.utils.timezone import now


class Event(models.TextChoices):
    FAILURE = "failure", "Attempt failed"
    EXHAUSTED = "exhausted", "Run failed for good"
    RECOVERY = "recovery", "Recovered after failure"


class Kind(models.TextChoices):
    EMAIL = "email", "E-mail"
    WEBHOOK = "webhook", "Webhook"


def validate_addresses(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError("E-mail addresses: expected a list of addresses.")
    for item in value:
        try:
            validate_email(item)
        except ValidationError:
            raise ValidationError(f"E-mail addresses: {item!r} is not an e-mail address.") from None


def new_secret() -> str:
    return secrets.token_hex(32)


class Channel(models.Model):
    """Where to tell about a task's runs, and on which events."""

    task = models.ForeignKey("taskhub.Task", on_delete=models.CASCADE, related_name="notification_channels")
    emails = models.JSONField(
        "e-mail addresses",
        default=list,
        blank=True,
        validators=[validate_addresses],
        help_text='Addresses to mail, e.g. ["oncall@example.com"]; sent through the mail settings (EMAIL_HOST…).',
    )
    webhook_url = models.CharField(
        "webhook URL",
        max_length=500,
        blank=True,
        default="",
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="Receives a POST with a JSON body, signed in X-TaskHub-Signature.",
    )
    webhook_secret = models.CharField(
        max_length=200,
        blank=True,
        default=new_secret,
        help_text="Key of the body's HMAC-SHA256 signature: X-TaskHub-Signature: sha256=<hex>.",
    )
    on_failure = models.BooleanField(default=False, help_text="Tell about every failed, timed-out or lost attempt.")
    on_exhausted = models.BooleanField(
        default=True, help_text="Tell when a run ends without success (its last attempt failed)."
    )
    on_recovery = models.BooleanField(default=True, help_text="Tell when the task succeeds again after a failure.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        ordering = ["task", "id"]
        indexes = [
            # The workers' list of tasks with notifications: enabled channels only.
            models.Index(fields=["task"], name="notify_channel_enabled_idx", condition=models.Q(enabled=True)),
        ]

    def __str__(self) -> str:
        targets = [*self.emails, *([self.webhook_url] if self.webhook_url else [])]
        return f"{self.task} → {', '.join(targets) or '(nobody)'}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if not self.emails and not self.webhook_url:
            errors["emails"] = "Give e-mail addresses, a webhook URL, or both."
        if self.webhook_url and not self.webhook_secret:
            errors["webhook_secret"] = "A webhook needs a secret to sign its body with."
        if not (self.on_failure or self.on_exhausted or self.on_recovery):
            errors["on_exhausted"] = "Choose at least one event: on failure, on exhausted or on recovery."
        if errors:
            raise ValidationError(errors)

    def wants(self, event: str) -> bool:
        return {Event.FAILURE: self.on_failure, Event.EXHAUSTED: self.on_exhausted, Event.RECOVERY: self.on_recovery}[
            event
        ]

    def kinds(self) -> list[str]:
        return [
            kind for kind, wanted in ((Kind.EMAIL, bool(self.emails)), (Kind.WEBHOOK, bool(self.webhook_url))) if wanted
        ]


class DeliveryStatus(models.TextChoices):
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed, tried again later"
    GAVE_UP = "gave_up", "Failed, not tried again"


class Delivery(models.Model):
    """One try at telling one channel about one event: written when the try ends."""

    Status = DeliveryStatus

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="deliveries")
    execution = models.ForeignKey(
        "executions.TaskExecution", on_delete=models.CASCADE, related_name="notification_deliveries"
    )
    event = models.CharField(max_length=16, choices=Event.choices)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    key = models.CharField(
        max_length=64, help_text="The same for every try of one notification (X-TaskHub-Delivery), for deduplication."
    )
    attempt = models.PositiveIntegerField(default=1, help_text="1 for the first try, 2 for the first retry, …")
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices)
    target = models.TextField(help_text="The addresses or the URL it went to.")
    response_code = models.IntegerField(null=True, blank=True, help_text="The webhook's HTTP status code.")
    error = models.TextField(blank=True, default="")
    started_at = models.DateTimeField()
    duration = models.FloatField(help_text="Seconds the try took.")

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "deliveries"
        indexes = [
            # The deliveries of one notification, in order (admin, tests).
            models.Index(fields=["key", "attempt"], name="notify_delivery_key_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} · {self.get_event_display().lower()} · try {self.attempt} · {self.status}"
