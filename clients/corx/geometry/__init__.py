"""Geometry layer: resampling between grids, warping with fields, fields onto the reference grid."""
