"""Shared test settings: hypothesis profiles and markers (see pyproject.toml)."""
import os

import uvloop
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_asyncio_loop_factories(config, item):
    """Every async test runs on uvloop, as the daemon does."""
    return {"uvloop": uvloop.new_event_loop}
