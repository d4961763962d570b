"""Deployment: verified ONNX export, gated static int8 quantization (and, alongside,
benchmarks and streaming). Heavy libraries are imported inside the functions."""
