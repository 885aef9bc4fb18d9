"""Integrations through which automations reach sidecar.

`asyncrun` has `AsyncRun`, the run of psycopg's AsyncConnection (exported as
`sidecar.AsyncRun`); `sqlalchemy` tags every transaction of a SQLAlchemy
Session, AsyncSession or Connection (its public path is `sidecar.sqlalchemy`);
`pytest_plugin` gives users' CI a database with sidecar and an assertion that a
run can be undone exactly; `mcp` serves agents that have no code of their own.

Nothing here is imported by `import sidecar` except `asyncrun`: each
integration needs its extra (rollback-sidecar[sqlalchemy], [pytest]).
"""
