"""The exact per-layer sensitivity sweep, its result store and its reports."""
