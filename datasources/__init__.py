"""datasources."""
