"""Admin changelists filter only through the filters they offer.

Django's admin lets anyone who can open a changelist filter it by any lookup
on the model's own fields through the URL (``?env__API_KEY__startswith=s3``):
whether a row is listed answers the question, one character at a time, for
fields the page itself masks, and a bad ``__regex`` ends in a server error.
``OfferedFiltersOnly`` allows the parameters of the sidebar's filters, of the
date hierarchy and of raw-id pop-ups, plus the few links the admin itself
builds (``extra_lookups``); Django answers anything else with 400 Bad Request.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.filters import SimpleListFilter
from django.contrib.admin.utils import get_fields_from_path
from django.contrib.admin.widgets import url_params_from_lookup_dict
from django.db import models
from django.http import HttpRequest


def filter_parameters(model: type[models.Model], field_path: str) -> set[str]:
    """Return the query parameters Django's default list filter for ``field_path`` reads."""
    field = get_fields_from_path(model, field_path)[-1]
    params = {f"{field_path}__isnull"}
    if field.is_relation:
        # RelatedFieldListFilter: the related row's key, exactly.
        params.add(f"{field_path}__{field.target_field.name}__exact")
    elif isinstance(field, models.DateField):  # DateTimeField too
        params.update({f"{field_path}__gte", f"{field_path}__lt"})
    else:  # boolean, choices, all values: one exact value
        params.add(f"{field_path}__exact")
    return params


class OfferedFiltersOnly(admin.ModelAdmin):
    """A ModelAdmin whose changelist accepts only the filters it offers."""

    # Lookups the admin's own links use besides the sidebar (e.g. "history" of one task).
    extra_lookups: tuple[str, ...] = ()

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        return lookup in self.offered_lookups(request) or self._is_raw_id_popup_lookup(lookup, value)

    def offered_lookups(self, request: HttpRequest | None) -> set[str]:
        allowed = set(self.extra_lookups)
        list_filter = self.get_list_filter(request) if request is not None else self.list_filter
        for item in list_filter:
            if isinstance(item, type) and issubclass(item, SimpleListFilter):
                allowed.add(item.parameter_name)
            elif isinstance(item, str):
                allowed |= filter_parameters(self.model, item)
            else:
                # A custom FieldListFilter class: it must name its parameters itself.
                raise TypeError(
                    f"{type(self).__name__}.list_filter: {item!r} is not supported by OfferedFiltersOnly; "
                    "use a field name or a SimpleListFilter."
                )
        if self.date_hierarchy:
            allowed |= {f"{self.date_hierarchy}__{part}" for part in ("year", "month", "day")}
        return allowed

    def _is_raw_id_popup_lookup(self, lookup: str, value: str) -> bool:
        # As Django's own check: the limit_choices_to of a ForeignKey to this
        # model, which the raw-id widget's pop-up passes in its URL.
        for fk_lookup in self.model._meta.related_fkey_lookups:
            if callable(fk_lookup):
                fk_lookup = fk_lookup()
            if (lookup, value) in url_params_from_lookup_dict(fk_lookup).items():
                return True
        return False
