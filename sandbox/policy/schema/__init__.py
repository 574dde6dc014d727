"""The JSON Schema of the policy format, shipped as package data."""
