"""Loading models and data."""
