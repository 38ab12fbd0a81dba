from django.apps import AppConfig


class TaskhubConfig(AppConfig):
    name = "taskhub"
    verbose_name = "TaskHub"

    def ready(self) -> None:
        from config import checks as config_checks  # noqa: F401  (secret key, the embedded default's files)
        from taskhub import (
            checks,  # noqa: F401  (registers the system checks)
            links,  # noqa: F401  (keeps Task.has_downstream in step with its links)
            schedules,  # noqa: F401  (keeps the beat rows of schedules in step with their task)
        )
