from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from taskhub.models import Task

EXAMPLES = [
    {
        "name": "example: hello",
        "description": "Succeeds at once.",
        "command": "echo 'Hello from TaskHub'",
        "timeout": 60,
    },
    {
        "name": "example: flaky",
        "description": "Fails on its first two attempts, then succeeds on the third (retries 2 s, then 4 s later).",
        "command": (
            'if [ "$TASKHUB_ATTEMPT" -lt 3 ]; then echo "attempt $TASKHUB_ATTEMPT: failing on purpose" >&2; exit 1; fi; '
            'echo "attempt $TASKHUB_ATTEMPT: succeeded"'
        ),
        "shell": True,
        "timeout": 60,
        "retry_count": 2,
        "retry_delay": 2,
        "retry_backoff": 2.0,
    },
    {
        "name": "example: too slow",
        "description": "Sleeps 30 s with a 5 s timeout: stopped and marked timed out.",
        "command": "sleep 30",
        "timeout": 5,
        "kill_grace": 2,
    },
]


class Command(BaseCommand):
    help = "Create the example tasks (once) and make sure an admin login exists; print how to log in."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000/admin/", help="Where the admin is served.")
        parser.add_argument("--no-examples", action="store_true")

    def handle(self, *args, url: str, no_examples: bool, **options):
        marker = settings.VAR_DIR / "examples-loaded"
        if not no_examples and not marker.exists():
            for example in EXAMPLES:
                Task.objects.get_or_create(name=example["name"], defaults=example)
            marker.write_text("The example tasks were created once; delete this file to create them again.\n")
            self.stdout.write(f"Created {len(EXAMPLES)} example tasks.")

        User = get_user_model()
        password_file = settings.VAR_DIR / "admin-password.txt"
        if not User.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", "", password)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
        self.stdout.write("")
        self.stdout.write(self.style.SUCCESS(f"TaskHub admin: {url}"))
        if password_file.exists() and User.objects.filter(username="admin", is_superuser=True).exists():
            self.stdout.write(
                f"Log in as 'admin' with the password in {password_file.relative_to(settings.BASE_DIR) if password_file.is_relative_to(settings.BASE_DIR) else password_file}: {password_file.read_text().strip()}"
            )
        else:
            self.stdout.write(
                "Log in with your superuser (reset a password with: .venv/bin/python manage.py changepassword NAME)."
            )
        self.stdout.write("")
