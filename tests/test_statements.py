"""The hot path's hand-written statements follow the models: a canary for a field added without them."""

from __future__ import annotations

from executions import statements
from executions.models import TaskExecution
from taskhub.models import Task


def attnames(model) -> tuple[str, ...]:
    return tuple(f.attname for f in model._meta.concrete_fields)


def test_the_claim_hands_back_every_column_of_the_execution_and_its_task():
    assert statements.EXECUTION_COLUMNS == attnames(TaskExecution)
    assert statements.TASK_COLUMNS == attnames(Task)


def test_the_launch_insert_leaves_out_only_columns_the_database_fills():
    # Every column the INSERT leaves out is nullable or has a database default.
    left_out = set(attnames(TaskExecution)) - set(statements.LAUNCH_INSERT_COLUMNS) - {"id"}
    for name in left_out:
        field = TaskExecution._meta.get_field(name.removesuffix("_id") if name.endswith("_id") else name)
        assert field.null or field.has_db_default(), name


def test_the_outcome_and_snapshot_columns_are_execution_columns():
    columns = set(attnames(TaskExecution))
    assert set(statements.OUTCOME_COLUMNS) <= columns
    assert set(statements.SNAPSHOT_COLUMNS) <= columns
