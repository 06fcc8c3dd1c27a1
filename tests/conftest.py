"""pytest configuration; the shared helpers are in helpers.py."""
