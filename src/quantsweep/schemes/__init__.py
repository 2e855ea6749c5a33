"""Candidate mixed-precision schemes built from a sensitivity ranking."""
