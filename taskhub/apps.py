from django.apps import AppConfig


class TaskhubConfig(AppConfig):
    name = "taskhub"
    verbose_name = "TaskHub"

    def ready(self) -> None:
        from taskhub import checks  # noqa: F401  (registers the system checks)
