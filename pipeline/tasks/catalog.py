"""The real tasks (BoolQ, SQuAD, ...): Hub ids, field mappings, release-file loaders and templates."""

from pipeline.tasks import Task

REAL_TASKS: tuple[Task, ...] = ()
