"""Fixture plugin (filled in by its backend's tests)."""
