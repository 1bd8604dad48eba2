"""Tests of the conflict rules (``conflict/``): real documents, no database."""
