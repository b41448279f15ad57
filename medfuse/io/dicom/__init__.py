"""DICOM: folder indexing, series reading, derived-series writing."""
