"""Storage behind narrow ports (``store.ports``): the PostgreSQL implementation, the
in-memory one, and the pure planning both share. See docs/storage.md."""
