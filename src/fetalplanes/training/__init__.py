"""Training with PyTorch Lightning: typed config, one module + loop for images or cached features
(the frozen fast path), optimizer rule, data modules, callbacks. Calibration is not here:
``fetalplanes.workflow`` runs it after training."""
