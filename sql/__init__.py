"""Shadow-schema migrations, applied in order by `sidecar install`."""
