"""Shared fixtures live in ``tests/fixtures/``, one module per piece of the local stack."""

pytest_plugins = [
    "tests.fixtures.waiting",
    "tests.fixtures.cluster",
    "tests.fixtures.clamd",
    "tests.fixtures.comm100",
    "tests.fixtures.filescans",
    "tests.fixtures.operator",
]
