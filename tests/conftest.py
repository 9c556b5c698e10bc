pytest_plugins = [
    "tests.plugins.proxy",
    "tests.plugins.redis_server",
    "tests.plugins.zookeeper_server",
]
