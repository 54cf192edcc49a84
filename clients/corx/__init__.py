"""corx: voxel-based dosimetry from serial SPECT/CT registered with CoRX-NET.

This package is the thin client: numpy/scipy/nibabel only, it never imports torch.
"""

__version__ = "0.1.0"
