"""Scoring: the model registry, onnxruntime sessions, the circuit breaker, the fallback chain.

Import `engine.scoring.onnx` / `engine.scoring.registry` only where onnxruntime is wanted.
"""
