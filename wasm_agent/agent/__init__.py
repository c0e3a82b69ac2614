"""CLI, settings, process lifecycle, status/metrics and the embedded reference host."""
