"""`corx pipeline`: registration, TIA, dose and an HTML report for one patient, on the reference SPECT grid.

Modules (one job each): ``run`` (orchestration), ``steps`` (timings, progress, error context), ``staging``
(atomic output folder), ``methods`` (registration methods), ``refine`` (test-time optimisation, torch),
``outputs`` (geometry: fields and images onto the reference grid, ITK field), ``inputs`` and ``dicom`` (reading
NIfTI or DICOM), ``hotspot`` (the profile point), ``truth`` (phantom ground truth), ``figures`` and ``report``.
Importing this package never imports torch.
"""
