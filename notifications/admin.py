from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from notifications.models import Channel, Delivery

DELIVERY_COLOURS = {"delivered": "#198754", "failed": "#fd7e14", "gave_up": "#dc3545"}


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    list_display = ["task", "targets", "on_failure", "on_exhausted", "on_recovery", "enabled"]
    list_filter = ["enabled", "on_failure", "on_exhausted", "on_recovery"]
    list_select_related = ["task"]
    raw_id_fields = ["task"]
    search_fields = ["task__name", "webhook_url"]
    fieldsets = [
        (None, {"fields": ["task", "enabled"]}),
        ("Where", {"fields": ["emails", "webhook_url", "webhook_secret"]}),
        ("When", {"fields": ["on_failure", "on_exhausted", "on_recovery"]}),
    ]

    @admin.display(description="sends to")
    def targets(self, obj: Channel) -> str:
        return ", ".join([*obj.emails, *([obj.webhook_url] if obj.webhook_url else [])])


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["started_at", "badge", "event", "kind", "target", "attempt", "response_code", "execution_link"]
    list_filter = ["status", "event", "kind"]
    list_select_related = ["execution"]
    search_fields = ["target", "key", "error"]
    date_hierarchy = "started_at"
    readonly_fields = [f.name for f in Delivery._meta.fields]

    @admin.display(description="status", ordering="status")
    def badge(self, obj: Delivery):
        return format_html(
            '<span style="color:#fff;background:{};border-radius:3px;padding:1px 6px">{}</span>',
            DELIVERY_COLOURS.get(obj.status, "#6c757d"),
            obj.get_status_display(),
        )

    @admin.display(description="execution")
    def execution_link(self, obj: Delivery):
        url = reverse("admin:executions_taskexecution_change", args=[obj.execution_id])
        return format_html('<a href="{}">#{}</a>', url, obj.execution_id)

    # Deliveries are the record of what was sent: written by the workers only.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Delivery | None = None) -> bool:
        return False
