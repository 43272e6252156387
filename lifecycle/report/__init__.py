"""Reports over what the platform recorded: where each tenant's data went (residency.py)."""
