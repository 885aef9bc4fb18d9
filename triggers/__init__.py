"""Trigger function templates, rendered per tracked table."""
