"""REST API routers: one per resource (runs, devices, health)."""
