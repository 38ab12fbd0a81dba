"""The API's JSON parser: 400 (not 500) for a body nested deeper than Python can parse."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, parsers

# Imported by rest_framework.views through the settings (DEFAULT_PARSER_CLASSES):
# this module must not import rest_framework.views itself.


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser; a RecursionError (JSON nested about a thousand levels deep) is bad input."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None
