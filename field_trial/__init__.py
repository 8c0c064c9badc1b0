"""Field trials: spec files, the link-model planner and the live runner of `feddst trial`."""
