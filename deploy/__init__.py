"""Development and deployment helpers for the Orchestrator Service."""
