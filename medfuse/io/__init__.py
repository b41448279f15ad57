"""Reading and writing: DICOM series, NIfTI volumes, 2-D images."""
