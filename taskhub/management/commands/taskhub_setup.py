from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from config import local_files
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
    help = (
        "Prepare this machine: the files under var/ (secret key, SQLite database, broker folders; private to "
        "their owner), the database schema, the example tasks (once) and an admin login; print how to log in."
    )
    # It makes what the system checks ask for (config.E001, config.E002), so
    # it must run without them.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000/admin/", help="Where the admin is served.")
        parser.add_argument("--no-examples", action="store_true")

    def handle(self, *args, url: str, no_examples: bool, verbosity: int, **options):
        for path in local_files.prepare():
            self.stdout.write(f"Prepared {path}")
        call_command("migrate", interactive=False, verbosity=verbosity)

        marker = settings.VAR_DIR / "examples-loaded"
        if not no_examples and not marker.exists():
            for example in EXAMPLES:
                Task.objects.get_or_create(name=example["name"], defaults=example)
            local_files.write_private_file(
                marker, "The example tasks were created once; delete this file to create them again.\n"
            )
            self.stdout.write(f"Created {len(EXAMPLES)} example tasks.")

        User = get_user_model()
        password_file = settings.VAR_DIR / "admin-password.txt"
        if not User.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", "", password)
            # A file left by an earlier database holds a password that no longer works.
            password_file.unlink(missing_ok=True)
            local_files.write_private_file(password_file, password + "\n")
        self.stdout.write("")
        self.stdout.write(self.style.SUCCESS(f"TaskHub admin: {url}"))
        if password_file.exists() and User.objects.filter(username="admin", is_superuser=True).exists():
            shown = (
                password_file.relative_to(settings.BASE_DIR)
                if password_file.is_relative_to(settings.BASE_DIR)
                else password_file
            )
            self.stdout.write(f"Log in as 'admin' with the password in {shown}: {password_file.read_text().strip()}")
        else:
            self.stdout.write(
                "Log in with your superuser (reset a password with: .venv/bin/python manage.py changepassword NAME)."
            )
        self.stdout.write("")
