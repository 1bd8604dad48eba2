"""Numbered, forward-only SQL migrations (``NNNN_name.sql``), applied by ``store.migrations``."""
