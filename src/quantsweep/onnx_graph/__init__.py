"""ONNX export, exact Torch-to-ONNX layer mapping, QDQ materialization and artifact checks."""
