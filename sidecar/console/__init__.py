"""The operator console (`sidecar serve`): pause, undo and review in a browser.

Needs the `console` extra: pip install 'rollback-sidecar[console]'.
"""
