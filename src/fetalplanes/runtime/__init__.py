"""The torch-free edge runtime: load an exported ``.onnx`` file and classify images with
only onnxruntime, numpy and Pillow (pydicom for DICOM). Install with
``pip install fetalplanes[runtime]``; nothing here (or in ``fetalplanes.core``) imports torch."""

from fetalplanes.runtime.predictor import OnnxPredictor, RuntimeModelError, load_spec

__all__ = ["OnnxPredictor", "RuntimeModelError", "load_spec"]
