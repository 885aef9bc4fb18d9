"""Agents and integrations: how automations reach sidecar.

How agents reach it without sidecar code of their own: `mcp` serves a guarded
PostgreSQL tool for AI agents over the Model Context Protocol (`sidecar mcp`,
extra rollback-sidecar[mcp]); `session` is the library under it (one agent
session, one run, each write an explained action); `sqlguard` checks an agent's
SQL before it reaches the server.

Integrations for automations written in code: `asyncrun` has `AsyncRun`, the run
of psycopg's AsyncConnection (exported as `sidecar.AsyncRun`); `sqlalchemy` tags
every transaction of a SQLAlchemy Session, AsyncSession or Connection (its public
path is `sidecar.sqlalchemy`); `pytest_plugin` gives users' CI a database with
sidecar and an assertion that a run can be undone exactly.

Nothing here is imported by `import sidecar` except `asyncrun`: each other
module needs its extra (rollback-sidecar[mcp], [sqlalchemy], [pytest]).
"""
