"""Agents: how automations reach sidecar without writing sidecar code of their own.

mcp serves a guarded PostgreSQL tool for AI agents over the Model Context Protocol
(`sidecar mcp`, extra `rollback-sidecar[mcp]`); session is the library under it (one
agent session, one run, each write an explained action); sqlguard checks an agent's SQL
before it reaches the server.
"""
