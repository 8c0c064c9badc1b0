"""feddst_cli."""
