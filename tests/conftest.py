"""Test configuration: fixtures live in topic modules, listed here."""

pytest_plugins = ["tests.fix_db", "tests.fix_sidecar", "tests.fix_pgbouncer", "pytester"]
