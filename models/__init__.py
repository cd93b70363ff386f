"""aavs.models."""
