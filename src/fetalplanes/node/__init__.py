"""The DICOM node: receive ultrasound instances (C-STORE or DICOMweb), classify them, send results back.

Parts (each a module, imported on use; nothing heavy happens at import time):

- :mod:`~fetalplanes.node.scp`: the Storage SCP (pynetdicom) that answers C-ECHO and C-STORE;
- :mod:`~fetalplanes.node.journal`: the on-disk journal that makes "nothing is lost" true;
- :mod:`~fetalplanes.node.classify`: the one adapter to the Predictor, and the admission gate;
- :mod:`~fetalplanes.node.sr`: the TID 1500 Comprehensive 3D SR written for each instance (highdicom);
- :mod:`~fetalplanes.node.forward`: delivery by C-STORE (pynetdicom) or STOW-RS (dicomweb-client);
- :mod:`~fetalplanes.node.pipeline`: the worker that turns journaled instances into delivered results;
- :mod:`~fetalplanes.node.dicomweb`: the pull path (QIDO/WADO, classify, STOW back);
- :mod:`~fetalplanes.node.orthanc`: a loopback Orthanc for tests, benchmarks and trying the node.

Standards: DICOM PS3.4 (Storage Service Class statuses), PS3.16 TID 1500 / 1501 / 4019,
PS3.18 (DICOMweb), IHE AI Results (AIR).
"""
