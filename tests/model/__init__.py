"""Tests of the pure domain code in ``model``."""
