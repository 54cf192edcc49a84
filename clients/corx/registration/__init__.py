"""Registration layer: preprocessing, network backends (PyTorch, ONNX Runtime, Triton), methods, Elastix."""
