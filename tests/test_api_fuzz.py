"""The API against its own schema: a schemathesis fuzz run, and the promises around it.

The fuzz run generates requests for every operation of /api/schema/ from
the schema itself (bounded: a few dozen examples per operation) and sends
them to the application in-process, signed in as a superuser. Checks: no
answer is a 5xx, and every error answer is a JSON body. The run endpoints
are included: with no worker and inside the test's transaction a launch only
writes a pending row that is rolled back, so nothing runs.

Also here: the Location header of 201/202 answers, validation errors that
name the field, and the interactive docs at /api/docs/ served from the
project's own static files.
"""

from __future__ import annotations

import json
import re

import pytest
import schemathesis
from django.contrib.staticfiles import finders
from django.core import signals
from django.core.serializers.json import DjangoJSONEncoder
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error

from executions.models import Status, TaskExecution

# Examples per operation; the whole run stays well under a minute on two cores.
MAX_EXAMPLES = 20


@pytest.fixture
def superuser_token(django_user_model) -> str:
    user = django_user_model.objects.create_superuser("fuzz", "fuzz@example.com", "pw-fuzz")
    return Token.objects.create(user=user).key


@pytest.fixture
def in_process_app(db):
    """Call Django's WSGI application in the test's own thread and transaction.

    A request's end normally closes the database connection (which would end
    the test's transaction); Django's test client suspends that the same way.
    """
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def openapi_document() -> dict:
    """The document /api/schema/ serves, generated in-process (it needs no request and no database)."""
    return SchemaGenerator().get_schema(request=None, public=True)


def error_body_is_json(ctx, response, case) -> bool | None:
    """Every 4xx and 5xx answer under /api/ is a JSON document."""
    if response.status_code < 400:
        return None
    values = next((v for name, v in response.headers.items() if name.lower() == "content-type"), [""])
    content_type = values[0] if isinstance(values, list) else values
    assert content_type.startswith("application/json"), (
        f"{response.status_code} answered as {content_type!r}, not JSON: {response.content[:200]!r}"
    )
    json.loads(response.content)
    return True


schema = schemathesis.openapi.from_dict(json.loads(json.dumps(openapi_document(), cls=DjangoJSONEncoder)))
schema.app = get_wsgi_application()


def test_the_fuzzed_document_is_the_one_the_api_serves(client, operator):
    client.force_login(operator)
    served = client.get("/api/schema/?format=json").json()
    assert served == schema.raw_schema


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_get_no_server_error_and_every_error_is_json(
    case, in_process_app, superuser_token, throttles_off
):
    response = case.call(headers={"Authorization": f"Token {superuser_token}"})
    case.validate_response(response, checks=[not_a_server_error, error_body_is_json])


@pytest.fixture
def throttles_off(settings):
    # Hundreds of requests from one user in seconds: the throttles would answer 429 (they have tests of their own).
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"anon": None, "user": None}}


# -- Location on 201 and 202 -----------------------------------------------------------------------------


@pytest.fixture
def client_of(operator) -> APIClient:
    client = APIClient()
    client.force_authenticate(operator)
    return client


@pytest.mark.django_db
def test_creating_a_task_answers_201_with_its_location(client_of):
    response = client_of.post("/api/tasks/", {"name": "made", "command": "true"}, format="json")
    assert response.status_code == 201
    assert response["Location"] == f"http://testserver/api/tasks/{response.data['id']}/"
    assert client_of.get(response["Location"]).data["name"] == "made"


@pytest.mark.django_db
def test_running_a_task_answers_202_with_the_location_of_the_execution(client_of, make_task):
    task = make_task()
    response = client_of.post(f"/api/tasks/{task.pk}/run/")
    assert response.status_code == 202
    execution = TaskExecution.objects.get(task=task)
    assert response["Location"] == f"http://testserver/api/executions/{execution.pk}/"


@pytest.mark.django_db
def test_cancel_retry_and_run_again_answer_202_with_the_location_of_the_execution_they_concern(client_of, make_task):
    task = make_task()
    pending = TaskExecution.objects.create(task=task, status=Status.PENDING)
    failed = TaskExecution.objects.create(task=task, status=Status.FAILED, exit_code=1)

    cancelled = client_of.post(f"/api/executions/{pending.pk}/cancel/")
    retried = client_of.post(f"/api/executions/{failed.pk}/retry/")
    again = client_of.post(f"/api/executions/{failed.pk}/run-again/")

    assert (cancelled.status_code, cancelled["Location"]) == (202, f"http://testserver/api/executions/{pending.pk}/")
    for response in (retried, again):
        assert response.status_code == 202, response.data
        assert response.data["id"] not in (pending.pk, failed.pk)
        assert response["Location"] == f"http://testserver/api/executions/{response.data['id']}/"


# -- validation errors name the field ----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"command": "true"}, "name"),
        ({"name": "x"}, "command"),
        ({"name": "x", "command": "true", "timeout": 0}, "timeout"),
        ({"name": "x", "command": "true", "retry_count": -1}, "retry_count"),
        ({"name": "x", "command": "true", "priority": 10}, "priority"),
        ({"name": "x", "command": "true", "env": {"1BAD": "v"}}, "env"),
        ({"name": "x", "command": "true", "env": ["A"]}, "env"),
        ({"name": "x", "command": "echo 'unclosed"}, "command"),
        ({"name": "x", "command": "true", "working_dir": "relative"}, "working_dir"),
        ({"name": "x", "command": "true", "queue": "no spaces"}, "queue"),
        ({"name": "x", "command": "true", "retry_backoff": "fast"}, "retry_backoff"),
    ],
)
def test_a_validation_error_names_the_field(client_of, body, field):
    response = client_of.post("/api/tasks/", body, format="json")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert list(response.json()) == [field]


# -- interactive docs --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_api_docs_are_served_from_our_own_static_files(client, operator):
    client.force_login(operator)
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    for asset in assets:
        assert not asset.startswith(("http:", "https:", "//")), f"{asset} comes from another site"
    static = [a for a in assets if a.startswith("/static/")]
    assert {a.rsplit("/", 1)[-1] for a in static} >= {"swagger-ui.css", "swagger-ui-bundle.js"}
    for asset in static:
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not among the static files"
    # The start-up script comes from the view itself (no inline script) and points at the schema.
    script_url = next(a for a in assets if "script=" in a)
    script = client.get(script_url.replace("&amp;", "&"))
    assert script.status_code == 200
    assert "/api/schema/" in script.content.decode()


@pytest.mark.django_db
def test_the_schema_answers_an_unknown_format_in_json(client, operator):
    # Found by the fuzz run: the schema view answered its errors in YAML.
    client.force_login(operator)
    response = client.get("/api/schema/?format=AAA")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


@pytest.mark.django_db
def test_the_api_docs_need_a_sign_in_like_the_schema(client):
    page = client.get("/api/docs/")
    assert page.status_code == 302
    assert page["Location"] == "/admin/login/?next=/api/docs/"
    refused_schema = client.get("/api/schema/")
    assert refused_schema.status_code == 401
    assert refused_schema["Content-Type"] == "application/json"  # not YAML, the schema's own format
    # An API client with a wrong token gets a JSON refusal, not a login page.
    refused = client.get("/api/docs/", HTTP_AUTHORIZATION="Token nope")
    assert refused.status_code == 401
