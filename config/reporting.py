"""What Django's error reports (the DEBUG page, error e-mails) may show of settings and the environment."""

from __future__ import annotations

import re

from django.views.debug import SafeExceptionReporterFilter


class SafeSettingsFilter(SafeExceptionReporterFilter):
    """Hide connection URLs too: DATABASE_URL, CELERY_BROKER_URL and the result backend carry passwords.

    The pattern is matched against setting names (and the keys of nested
    dicts, so a cache's LOCATION URL too) and, on the DEBUG page, against the
    names in the request's META (the process environment under runserver).
    """

    hidden_settings = re.compile(
        r"API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|DSN|LOCATION|CELERY_RESULT_BACKEND",
        flags=re.IGNORECASE,
    )
