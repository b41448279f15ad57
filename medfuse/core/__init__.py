"""Pure-NumPy fusion core: filters, two-scale decomposition, weights.

No file I/O, no DICOM, no onnxruntime here: the CNN enters only through the
:class:`medfuse.core.extractor.ActivityExtractor` protocol.
"""
