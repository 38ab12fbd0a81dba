"""Suites in the "Viewer" and "Operator" groups: viewers see suites and their hosts, operators also edit suites
and clear a failed host. Groups an operator removed are left alone."""

from django.db import migrations

GRANTS = {
    "Viewer": {"taskhub": ["view_suite"], "executions": ["view_suitehost", "view_hookrun", "view_artifact"]},
    "Operator": {
        "taskhub": ["view_suite", "add_suite", "change_suite", "delete_suite"],
        "executions": ["view_suitehost", "change_suitehost", "view_hookrun", "view_artifact"],
    },
}


def grant(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, by_app in GRANTS.items():
        group = Group.objects.filter(name=name).first()
        if group is None:
            continue
        for app_label, codenames in by_app.items():
            group.permissions.add(*Permission.objects.filter(content_type__app_label=app_label, codename__in=codenames))


class Migration(migrations.Migration):
    dependencies = [
        ("executions", "0012_suite_hosts"),
        ("taskhub", "0010_suites"),
    ]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
