"""Fake-quantization numerics and per-layer quantizer switching."""
