"""Ingot's front door: doit builds the steps compiler/ makes from the manifests in specs/."""

import runner
from compiler import doit_tasks

DOIT_CONFIG, TASKS = doit_tasks.compile_here(__file__, runner.run)


def task_ingot():
    yield from TASKS
