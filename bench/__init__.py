"""sidecar's benchmark suite (issue 4). Run it with: python -m bench.run  (see bench/README.md)."""
