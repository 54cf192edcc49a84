"""Serving layer: the Triton server wrapper and the `corx export`, `corx serve`, `corx register` commands."""
