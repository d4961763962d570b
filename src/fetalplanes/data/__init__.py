"""Data: FETAL_PLANES_DB reader, other sources (folders, CSV lists), patient-level splits,
the synthetic phantom set, the Zenodo download and torch datasets.

Submodules are imported on use; ``torch_data`` is the only one that needs torch.
"""
