"""`python -m sidecar.cli`: the same as the `sidecar` command."""

from . import main

main()
