"""Input/output layer: NIfTI and DICOM in, the manifest, volumes, input activity checks, DICOM out."""
