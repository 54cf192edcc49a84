"""Evaluation layer: registration methods compared on the phantom cohorts (the paper's Table 2 and 3, ground truth).

Modules (each with one job; torch and itk are imported lazily, inside functions):

- ``metrics``: image metrics of a field on a normalised pair (the bundle evaluator's definitions), folding,
  parameter counts;
- ``ground_truth``: field error against the phantom's true field, Dice of warped labels, tumour centroid error;
- ``methods``: the compared methods (identity, elastix, elastix-spect, transmorph, corx-nocs, corx; Elastix itself
  is :mod:`corx.registration.elastix`);
- ``cohort``: the benchmark's pairs, generating the phantom cohort when absent;
- ``cache``: per-pair results on disk (content-keyed, atomic, resumable);
- ``tia_eval``: TIA columns (paper Table 3 and against the true TIA);
- ``benchmark``: runs everything and writes results.json / results.md;
- ``tables``: the markdown tables and the paper's own figures.
"""
