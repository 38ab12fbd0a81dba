"""The API's interactive documentation: Swagger UI, served from the project's own static files (no CDN)."""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse
from django.urls import reverse
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.exceptions import AuthenticationFailed, NotAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response


class SchemaView(SpectacularAPIView):
    """The OpenAPI schema (YAML, or JSON with ?format=json); its errors are JSON like every answer under /api/.

    Left to itself the view answers an error in the schema's first format,
    YAML: a 401 to a client that is not signed in, a 404 for an unknown
    ?format=.
    """

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return response


class APIDocsView(SpectacularSwaggerSplitView):
    """Swagger UI for signed-in users, like the schema it reads; a visitor who is not signed in is sent to log in.

    The split view serves its start-up script from a URL of its own, so the
    page needs no inline script.
    """

    def handle_exception(self, exc: Exception) -> HttpResponse:
        if isinstance(exc, NotAuthenticated | AuthenticationFailed) and "HTTP_AUTHORIZATION" not in self.request.META:
            # A browser that is not signed in: the admin's login brings it back here.
            return redirect_to_login(self.request.get_full_path(), reverse("admin:login"))
        return super().handle_exception(exc)
