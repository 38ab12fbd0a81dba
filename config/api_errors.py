"""Every answer under /api/ is JSON: DRF's errors, bad bodies, and Django's own 400/403/404/500."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler, set_rollback

API_PREFIX = "/api/"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "payload_too_large"


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    """Answer DRF's errors as DRF does, and bad values the database refuses as 4xx, not 500."""
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        exc = PayloadTooLarge(f"Request body too large: at most {limit} bytes are accepted.")
    elif isinstance(exc, DjangoValidationError):
        # Raised by model code below the serializer (a full_clean in a save): the input was bad.
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, DataError):
        # A value the column cannot hold (out of range, a character the database refuses).
        exc = exceptions.ValidationError({"detail": "A value does not fit what the database can store."})
    elif isinstance(exc, IntegrityError):
        # Another request changed the same rows first (a unique name taken meanwhile).
        set_rollback()
        return Response(
            {"detail": "The request conflicts with the current state; reload and try again."},
            status=status.HTTP_409_CONFLICT,
        )
    elif isinstance(exc, RecursionError):
        exc = exceptions.ParseError("Input nested too deeply.")
    return exception_handler(exc, context)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"detail": "Bad request."}, status=status.HTTP_400_BAD_REQUEST)
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(
            {"detail": "You do not have permission to perform this action."}, status=status.HTTP_403_FORBIDDEN
        )
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        # Nothing about the failure itself: the traceback goes to the log, not to the caller.
        return JsonResponse({"detail": "Server error."}, status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    return defaults.server_error(request)
