"""aavs.orchestrator."""
