"""Training with PyTorch Lightning: typed config, module, data module, callbacks, fit, checkpoints."""
