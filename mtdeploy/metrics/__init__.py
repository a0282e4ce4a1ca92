"""Activity, energy and latency measures of a deployed network."""
