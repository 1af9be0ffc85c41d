"""doit integration: up-to-date from the store, incremental rebuilds, crash safety, parallel runs."""

from conftest import ran, skipped


def test_second_run_executes_nothing(tiny_project):
    first = tiny_project.doit()
    assert ran(first) == ["dataset.docs", "main.tok", "main.init"]
    second = tiny_project.doit()
    assert ran(second) == []
    assert skipped(second) == ["dataset.docs", "main.tok", "main.init"]
