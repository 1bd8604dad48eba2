"""Domain conflict rules run after each merge (pure code; no database, no network)."""
