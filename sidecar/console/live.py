"""Live state: a Server-Sent Events stream of sidecar's NOTIFY messages.

sidecar.pause/resume, undo and rerun send NOTIFY on channel 'sidecar' with a
JSON payload. Each open page that wants live state holds one stream, on its
own LISTEN connection as the signed-in person; live.js then fetches the
changed part of the page. The stream ends when the session does.
"""

from __future__ import annotations

import json

import psycopg
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

KEEPALIVE_SECONDS = 15


async def stream(request: Request) -> Response:
    sessions = request.app.state.console.sessions
    sid = request.session.get("sid")
    session = sessions.get(sid)
    if session is None:
        return Response("sign in first", status_code=401, media_type="text/plain")

    async def events():
        try:
            conn = await sessions.async_connection(session)
        except psycopg.OperationalError as exc:
            if "authentication failed" in str(exc):
                yield "event: signedout\ndata: {}\n\n"
            return  # the database is out of reach: the browser tries again (retry)
        try:
            await conn.execute("LISTEN sidecar")
            yield "retry: 5000\nevent: hello\ndata: {}\n\n"
            async for chunk in _relay(conn, sessions, sid, request):
                yield chunk
        except psycopg.OperationalError:
            return  # the database went away: the browser reconnects (retry) once it is back
        finally:
            await conn.close()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
stream.signed_in_only = True  # checks the session itself


async def _relay(conn, sessions, sid, request):
    """NOTIFY messages as server-sent events, with keepalives, until the session or the page ends."""
    while True:
        async for note in conn.notifies(timeout=KEEPALIVE_SECONDS):
            try:
                payload = json.loads(note.payload)
            except ValueError:
                payload = {"event": "unknown"}
            yield f"event: sidecar\ndata: {json.dumps(payload)}\n\n"
        if sessions.peek(sid) is None:
            yield "event: signedout\ndata: {}\n\n"
            return
        if await request.is_disconnected():
            return
        yield ": keepalive\n\n"
