"""The "Viewer" and "Operator" groups, so that a new user is one click from the right permissions.

Viewer: looks at tasks, executions, workers and schedules. Operator: also
adds, changes and runs tasks and edits their schedules. Run once; later edits
of the groups in the admin are the operators' own and are kept.
"""

from django.db import migrations

VIEW = {
    "taskhub": ["view_task"],
    "executions": ["view_taskexecution", "view_worker"],
    "django_celery_beat": [
        "view_periodictask",
        "view_crontabschedule",
        "view_intervalschedule",
        "view_clockedschedule",
        "view_solarschedule",
    ],
}
OPERATE = {
    "taskhub": ["add_task", "change_task", "delete_task", "run_task"],
    "django_celery_beat": [
        f"{action}_{model}"
        for action in ("add", "change", "delete")
        for model in ("periodictask", "crontabschedule", "intervalschedule", "clockedschedule")
    ],
}
GROUPS = {"Viewer": [VIEW], "Operator": [VIEW, OPERATE]}


def create_groups(apps, schema_editor):
    # Permissions are made after all migrations (post_migrate); make them now so the groups can hold them.
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, grants in GROUPS.items():
        group, created = Group.objects.get_or_create(name=name)
        if not created:
            continue  # an operator's own group of that name: leave it as it is
        for grant in grants:
            for app_label, codenames in grant.items():
                group.permissions.add(
                    *Permission.objects.filter(content_type__app_label=app_label, codename__in=codenames)
                )


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("taskhub", "0003_rules_concurrency_owner"),
        ("executions", "0008_exhausted_runs_index"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
