"""The API v4 endpoints, one module per entity group."""
