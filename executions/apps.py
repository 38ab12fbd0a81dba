from django.apps import AppConfig


class ExecutionsConfig(AppConfig):
    name = "executions"
    verbose_name = "Executions"

    def ready(self) -> None:
        from executions import checks  # noqa: F401  (registers the system checks and the worker's start check)
