"""Shared test helpers (synthetic scenes); importable as ``helpers`` because test/ is on sys.path (conftest)."""
