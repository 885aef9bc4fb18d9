"""`sidecar.sqlalchemy`: the public path of the SQLAlchemy integration (sidecar/agents/sqlalchemy.py).

    import sidecar.sqlalchemy
    with sidecar.sqlalchemy.run(session, "ticket-bot", meta={"prompt": "v3"}) as run:
        with run.action("close:ticket-42"):
            session.execute(...)

Needs rollback-sidecar[sqlalchemy] (and [asyncpg] for that driver).
"""

from .agents.sqlalchemy import SessionRun, run

__all__ = ["SessionRun", "run"]
