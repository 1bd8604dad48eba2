"""The server's live side: per-project feeds of committed changes and the sync sessions."""
