"""Dosimetry layer: TIA (eq. 6, multi-model), dose, BED, VOI tables, uncertainty, the `corx tia` command."""
