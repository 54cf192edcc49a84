"""Pipeline layer: `corx pipeline`, registration, TIA, dose and an HTML report for one patient on the reference grid.

Modules (one job each): ``run`` (orchestration), ``steps`` (timings, progress, error context), ``staging``
(atomic output folder), ``truth`` (phantom ground truth). Importing this package never imports torch.
"""
