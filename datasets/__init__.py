"""aavs.datasets."""
