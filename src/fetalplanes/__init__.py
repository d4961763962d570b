"""fetalplanes: classify maternal-fetal ultrasound images into standard planes.

The package is split by concern: ``core`` and ``runtime`` are torch-free (edge install),
``data``, ``models``, ``training``, ``evaluation``, ``explain``, ``deploy``, ``serve`` and
``reproduce`` build on them. Nothing heavy is imported here.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
