"""Score ONNX artifacts in ONNX Runtime: detection accuracy, latency, size."""
