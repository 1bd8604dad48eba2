"""The sync protocol core: wire messages, codec and connection state machine (no I/O)."""
