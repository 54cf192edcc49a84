"""Report layer: figures, the HTML report, the montage and the profile point (hot spot)."""
