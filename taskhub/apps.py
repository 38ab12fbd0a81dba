from django.apps import AppConfig


class TaskhubConfig(AppConfig):
    name = "taskhub"
    verbose_name = "TaskHub"
