"""CNN feature extractors run by onnxruntime, and the model registry."""
