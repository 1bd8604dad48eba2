"""Metrics and structured logs of a server process."""
