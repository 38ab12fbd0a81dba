"""The API and admin as each kind of user would try them: no way past a permission, no secret shown, JSON errors."""

from __future__ import annotations

import secrets
import sys
import time

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.http import HttpRequest
from django.test import RequestFactory, override_settings
from django.urls import include, path, reverse
from django.views.debug import ExceptionReporter, get_default_exception_reporter_filter
from rest_framework.authtoken.models import Token
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.test import APIClient

import config.urls
from executions.models import Status, TaskExecution
from taskhub.models import Task
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db


# -- a URL configuration with views that fail, for the error pages -----------------------------


class Boom(Exception):
    """Raised by the failing views below; nothing else raises it."""


def boom(request: HttpRequest):
    raise Boom("the view failed on purpose")


@api_view(["GET"])
@permission_classes([AllowAny])
def api_boom(request):
    raise Boom("the API view failed on purpose")


urlpatterns = [
    path("api/boom/", api_boom),
    path("boom/", boom),
    path("", include(config.urls.urlpatterns)),
]
# The project's handlers, named as config.urls names them.
handler400 = "config.api_errors.bad_request"
handler403 = "config.api_errors.permission_denied"
handler404 = "config.api_errors.page_not_found"
handler500 = "config.api_errors.server_error"
FAILING_URLS = __name__


# -- helpers -------------------------------------------------------------------------------------


def user_with(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, f"{username}@example.com", "pw-" + username, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def api_as(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert isinstance(body, dict) and body, body
    return body


@pytest.fixture
def empty_cache():
    """Throttle counters live in the cache: start and end each test without any."""
    cache.clear()
    yield
    cache.clear()


# -- run, cancel and retry need the view permission of what they act on -------------------------


def test_running_a_task_needs_the_view_permission_of_tasks_too(make_task):
    task = make_task()
    runner = user_with("rita", "run_task", "view_taskexecution")
    response = api_as(runner).post(f"/api/tasks/{task.pk}/run/")
    assert_json_error(response, 403)
    assert not TaskExecution.objects.exists()


def test_a_runner_who_may_not_view_executions_gets_only_id_status_and_link(make_task):
    task = make_task()
    runner = user_with("rita", "run_task", "view_task")
    response = api_as(runner).post(f"/api/tasks/{task.pk}/run/")
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"id", "status", "url"}
    assert body["status"] == "pending"
    assert body["url"].endswith(f"/api/executions/{body['id']}/")
    assert TaskExecution.objects.get(pk=body["id"]).task == task


def test_a_runner_who_may_view_executions_gets_the_whole_execution(make_task):
    task = make_task()
    runner = user_with("rita", "run_task", "view_task", "view_taskexecution")
    body = api_as(runner).post(f"/api/tasks/{task.pk}/run/").json()
    assert {"stdout", "stderr", "run_id", "attempt"} <= set(body)


def test_cancelling_needs_the_view_permission_of_executions_too(make_task):
    pending = TaskExecution.objects.create(task=make_task(), status=Status.PENDING, stdout="secret output")
    runner = user_with("rita", "run_task", "view_task")
    response = api_as(runner).post(f"/api/executions/{pending.pk}/cancel/")
    body = assert_json_error(response, 403)
    assert "secret output" not in str(body)
    pending.refresh_from_db()
    assert (pending.status, pending.cancel_requested_at) == (Status.PENDING, None)


@pytest.mark.parametrize("action", ["retry", "run-again"])
def test_retrying_needs_the_view_permission_of_executions_too(make_task, action):
    failed = TaskExecution.objects.create(task=make_task(), status=Status.FAILED)
    runner = user_with("rita", "run_task", "view_task")
    assert_json_error(api_as(runner).post(f"/api/executions/{failed.pk}/{action}/"), 403)
    assert TaskExecution.objects.count() == 1


# -- deleting through the API follows the admin's rule -----------------------------------------------


@pytest.fixture
def deleter() -> User:
    return user_with("dora", "view_task", "delete_task")


@pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.RUNNING])
def test_deleting_a_task_with_executions_is_refused_as_in_the_admin(deleter, make_task, status):
    task = make_task()
    execution = TaskExecution.objects.create(task=task, status=status)
    response = api_as(deleter).delete(f"/api/tasks/{task.pk}/")
    body = assert_json_error(response, 409)
    assert task.deletion_blocker() in body["detail"]
    assert Task.objects.filter(pk=task.pk).exists()
    assert TaskExecution.objects.filter(pk=execution.pk).exists()


def test_deleting_a_task_without_history_works(deleter, make_task):
    task = make_task()
    assert api_as(deleter).delete(f"/api/tasks/{task.pk}/").status_code == 204
    assert not Task.objects.filter(pk=task.pk).exists()


# -- every error is JSON, and bad input is 4xx ----------------------------------------------------------


def test_env_nested_a_thousand_levels_deep_is_a_400_in_json(operator):
    depth = max(1000, sys.getrecursionlimit())
    body = '{"name": "deep", "command": "true", "env": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
    response = api_as(operator).post("/api/tasks/", body, content_type="application/json")
    assert "nested too deeply" in assert_json_error(response, 400)["detail"]
    assert not Task.objects.exists()


def test_invalid_json_is_a_400_in_json(operator):
    response = api_as(operator).post("/api/tasks/", '{"name": ', content_type="application/json")
    assert "JSON parse error" in assert_json_error(response, 400)["detail"]


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_a_body_over_the_upload_limit_is_a_413_in_json(operator):
    body = '{"name": "big", "command": "true", "description": "' + "x" * 2000 + '"}'
    response = api_as(operator).post("/api/tasks/", body, content_type="application/json")
    assert "at most 1000 bytes" in assert_json_error(response, 413)["detail"]
    assert not Task.objects.exists()


@pytest.mark.parametrize(
    "fields",
    [
        {"timeout": 10**30},
        {"timeout": "1e400"},
        {"retry_backoff": "NaN"},
        {"env": {"A": "nul\u0000inside"}},
        {"env": []},
        {"name": None},
    ],
    ids=["huge-int", "float-overflow", "nan", "nul-in-env", "env-not-object", "null-name"],
)
def test_bad_values_are_a_400_in_json_naming_the_field(operator, fields):
    response = api_as(operator).post("/api/tasks/", {"name": "t", "command": "true", **fields}, format="json")
    body = assert_json_error(response, 400)
    assert set(fields) & set(body) or "detail" in body, body
    assert not Task.objects.exists()


def test_an_unknown_api_path_is_a_404_in_json_and_other_paths_keep_the_html_page(operator):
    client = api_as(operator)
    assert_json_error(client.get("/api/no-such-thing/"), 404)
    assert_json_error(client.get("/api/executions/999999999/"), 404)
    page = client.get("/no-such-page/")
    assert page.status_code == 404
    assert page["Content-Type"].startswith("text/html")


@override_settings(ROOT_URLCONF=FAILING_URLS)
def test_a_failing_api_view_is_a_500_in_json_without_the_error_text(operator):
    client = APIClient(raise_request_exception=False)
    body = assert_json_error(client.get("/api/boom/"), 500)
    assert "on purpose" not in str(body)
    page = client.get("/boom/")
    assert page.status_code == 500
    assert page["Content-Type"].startswith("text/html")


@override_settings(ROOT_URLCONF=FAILING_URLS)
def test_a_failing_view_logs_its_traceback(caplog):
    with caplog.at_level("ERROR", logger="django.request"):
        APIClient(raise_request_exception=False).get("/api/boom/")
    records = [r for r in caplog.records if r.name == "django.request" and r.exc_info]
    assert records and records[0].exc_info[0] is Boom


# -- the execution list carries a summary of the output, the detail the output ----------------------------


def test_the_execution_list_carries_the_tail_and_size_of_the_output_and_the_detail_the_output(operator, make_task):
    stdout = "first line\n" + "y" * 50 + "\n" + "x" * 300 + "\n\n"
    stderr = "warning: é\n"
    execution = TaskExecution.objects.create(task=make_task(), status=Status.FAILED, stdout=stdout, stderr=stderr)
    client = api_as(operator)

    row = client.get("/api/executions/").json()["results"][0]
    detail = client.get(f"/api/executions/{execution.pk}/").json()

    assert "stdout" not in row and "stderr" not in row
    assert row["stdout_tail"] == "x" * 200
    assert row["stderr_tail"] == "warning: é"
    assert row["stdout_bytes"] == len(stdout.encode())
    assert row["stderr_bytes"] == len(stderr.encode())
    assert set(detail) - {"stdout", "stderr"} <= set(row)
    assert (detail["stdout"], detail["stderr"]) == (stdout, stderr)


def test_the_tail_of_an_empty_output_is_empty(operator, make_task):
    TaskExecution.objects.create(task=make_task(), status=Status.PENDING)
    row = api_as(operator).get("/api/executions/").json()["results"][0]
    assert (row["stdout_tail"], row["stdout_bytes"], row["stderr_tail"], row["stderr_bytes"]) == ("", 0, "", 0)


# -- the DEBUG page and error reports hide connection URLs ---------------------------------------------------


# Made at run time so that the source lines the DEBUG page quotes do not contain it.
PASSWORD = secrets.token_hex(8)
SECRET_URLS = {
    "DATABASE_URL": f"postgres://taskhub:{PASSWORD}@db.example/taskhub",
    "CELERY_BROKER_URL": f"redis://:{PASSWORD}@redis.example:6379/0",
    "CELERY_RESULT_BACKEND": f"redis://:{PASSWORD}@redis.example:6379/1",
    "TASKHUB_CACHE_URL": f"redis://:{PASSWORD}@redis.example:6379/2",
}


@override_settings(**SECRET_URLS)
def test_error_reports_hide_the_connection_urls_in_settings():
    safe = get_default_exception_reporter_filter().get_safe_settings()
    for name, url in SECRET_URLS.items():
        assert safe[name] != url
        assert PASSWORD not in str(safe[name])


@override_settings(**SECRET_URLS, DEBUG=True)
def test_the_debug_page_shows_no_password_of_the_settings_or_the_environment():
    request = RequestFactory().get("/api/tasks/", **SECRET_URLS)
    try:
        raise Boom("for the report")
    except Boom:
        html = ExceptionReporter(request, *sys.exc_info()).get_traceback_html()
    assert "for the report" in html
    assert PASSWORD not in html


# -- throttling -----------------------------------------------------------------------------------------------


def test_the_api_answers_429_in_json_past_the_users_rate(operator, empty_cache):
    rates = {"anon": None, "user": "3/min"}
    with override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}):
        client = api_as(operator)
        assert [client.get("/api/tasks/").status_code for _ in range(3)] == [200, 200, 200]
        refused = client.get("/api/tasks/")
        assert "throttled" in assert_json_error(refused, 429)["detail"].lower()
        assert int(refused["Retry-After"]) > 0


def test_the_api_is_throttled_by_default():
    rest = settings.REST_FRAMEWORK
    assert rest["DEFAULT_THROTTLE_CLASSES"] == ["config.throttles.AnonThrottle", "config.throttles.UserThrottle"]
    assert rest["DEFAULT_THROTTLE_RATES"] == {"anon": "30/min", "user": "1200/min"}


def admin_login(client, username: str, password: str):
    return client.post(reverse("admin:login"), {"username": username, "password": password, "next": "/admin/"})


def test_the_eleventh_failed_login_within_a_minute_is_refused_even_with_the_right_password(client, empty_cache):
    User.objects.create_user("admin", "admin@example.com", "right-password", is_staff=True, is_superuser=True)
    for _ in range(10):
        assert admin_login(client, "admin", "wrong-password").status_code == 200  # the form again, with the error
    refused = admin_login(client, "admin", "right-password")
    assert refused.status_code == 429
    assert "Too many failed logins" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    # Other user names are not held up by someone else's failures.
    User.objects.create_user("other", "other@example.com", "other-password", is_staff=True)
    assert admin_login(client, "other", "other-password").status_code == 302


def test_logins_are_accepted_again_after_the_window(client, empty_cache):
    User.objects.create_user("admin", "admin@example.com", "right-password", is_staff=True)
    with override_settings(TASKHUB_LOGIN_FAILURE_LIMIT=2, TASKHUB_LOGIN_FAILURE_WINDOW=1):
        admin_login(client, "admin", "wrong")
        admin_login(client, "admin", "wrong")
        assert admin_login(client, "admin", "right-password").status_code == 429
        wait_for(
            lambda: admin_login(client, "admin", "right-password").status_code == 302,
            timeout=5,
            interval=0.25,
            what="the login window to pass",
        )


# -- API tokens are shown in full once, to whoever creates them ----------------------------------------------


@pytest.fixture
def token(operator) -> Token:
    return Token.objects.create(user=operator)


@pytest.fixture
def token_viewer(client) -> APIClient:
    client.force_login(user_with("tara", "view_tokenproxy"))
    return client


def test_a_user_who_may_view_tokens_sees_only_their_first_four_characters(token_viewer, token):
    pages = [
        reverse("admin:authtoken_tokenproxy_changelist"),
        reverse("admin:authtoken_tokenproxy_change", args=[token.user_id]),
        reverse("admin:authtoken_tokenproxy_history", args=[token.user_id]),
    ]
    for page in pages:
        response = token_viewer.get(page)
        assert response.status_code == 200, page
        html = response.content.decode()
        assert token.key not in html, page
        assert token.key[:8] not in html, page
    assert f"{token.key[:4]}…" in token_viewer.get(pages[0]).content.decode()


def test_a_token_cannot_be_guessed_by_filtering_the_list_on_its_key(token_viewer, token):
    changelist = reverse("admin:authtoken_tokenproxy_changelist")
    for lookup in ("key__startswith", "key", "user__auth_token__key__startswith", "pk__startswith"):
        response = token_viewer.get(changelist, {lookup: token.key[:1]})
        assert response.status_code == 400, lookup
    assert token_viewer.get(changelist, {"o": "1"}).status_code == 200  # ordering by the key column is ignored


def test_a_token_viewer_cannot_change_or_delete_a_token(token_viewer, token):
    change = reverse("admin:authtoken_tokenproxy_change", args=[token.user_id])
    assert token_viewer.post(change, {"user": token.user_id}).status_code == 403
    assert token_viewer.post(reverse("admin:authtoken_tokenproxy_delete", args=[token.user_id])).status_code == 403
    assert Token.objects.filter(key=token.key).exists()


def test_whoever_creates_a_token_sees_it_once_and_the_admin_log_keeps_only_its_start(client, operator):
    creator = user_with("cora", "add_tokenproxy", "view_tokenproxy")
    client.force_login(creator)
    response = client.post(reverse("admin:authtoken_tokenproxy_add"), {"user": operator.pk}, follow=True)
    key = Token.objects.get(user=operator).key
    assert key in response.content.decode()  # once, in the message after saving
    assert key not in client.get(reverse("admin:authtoken_tokenproxy_changelist")).content.decode()
    entry = LogEntry.objects.get(user=creator)
    assert key not in entry.object_repr and key[:4] in entry.object_repr


def test_a_token_still_authenticates_the_api(token, make_task):
    make_task(name="visible")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/tasks/").status_code == 200


# -- the schema is for signed-in users ----------------------------------------------------------------------


def test_the_schema_requires_authentication(client, operator):
    assert client.get("/api/schema/").status_code in (401, 403)
    assert api_as(operator).get("/api/schema/", HTTP_ACCEPT="application/json").status_code == 200


# -- a long command is refused by its length, before anything slow -------------------------------------------


def test_a_one_megabyte_command_is_refused_quickly(operator):
    client = api_as(operator)
    started = time.monotonic()
    response = client.post("/api/tasks/", {"name": "long", "command": "a" * 1_000_000}, format="json")
    elapsed = time.monotonic() - started
    body = assert_json_error(response, 400)
    assert "65536" in body["command"][0]
    # Splitting it took 16 s; refusing it by length takes milliseconds. The
    # bound tells the two apart, wide for a loaded machine.
    assert elapsed < 8, f"took {elapsed:.1f} s"
    assert not Task.objects.exists()
