"""Export-time tools: build CNN trunks in torch and write them as ONNX.

Everything under this subpackage imports torch; it is imported only by the
``medfuse models export`` command and ``models/export.py``, never by the
run-time extractor (``import medfuse.features`` stays torch-free).
"""
