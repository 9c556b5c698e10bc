import pytest

from tests.helpers import kill_spawned

pytest_plugins = [
    "tests.plugins.proxy",
    "tests.plugins.redis_server",
    "tests.plugins.zookeeper_server",
]


@pytest.fixture(autouse=True)
def _no_campaign_outlives_its_test():
    yield
    kill_spawned()
