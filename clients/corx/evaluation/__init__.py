"""Evaluation of registration methods on the phantom cohorts: the paper's Table 2 and 3 plus ground truth.

Modules (each with one job; torch and itk are imported lazily, inside functions):

- ``elastix``: the Elastix B-spline baseline (CT-driven, and a SPECT-aware multi-metric variant) on the network
  grid, with the conversion of Elastix deformation fields to the corx field convention;
- ``metrics``: image metrics of a field on a normalised pair (the bundle evaluator's definitions), folding,
  parameter counts;
- ``ground_truth``: field error against the phantom's true field, Dice of warped labels, tumour centroid error;
- ``methods``: the compared methods (identity, elastix, elastix-spect, transmorph, corx-nocs, corx);
- ``cohort``: the benchmark's pairs, generating the phantom cohort when absent;
- ``cache``: per-pair results on disk (content-keyed, atomic, resumable);
- ``tia_eval``: TIA columns (paper Table 3 and against the true TIA);
- ``benchmark``: runs everything and writes results.json / results.md;
- ``tables``: the markdown tables and the paper's own figures.
"""
