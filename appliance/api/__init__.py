"""The agent HTTP API."""
