"""Shared pytest fixtures: a real `pylog serve` subprocess (tests/broker_fixture.py)."""
import pytest

from broker_fixture import broker, broker_factory  # noqa: F401  (fixtures)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failed test."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
