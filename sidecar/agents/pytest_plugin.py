"""pytest plugin for users' CI (placeholder, filled in below)."""
