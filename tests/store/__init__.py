"""Tests of the PostgreSQL storage layer, run against a real server."""
