"""Mixed-precision inference for the Ignite engines on any device.

MONAI's engines only autocast on CUDA (``amp=True``); this inferer runs the network under
``torch.autocast`` on the inputs' own device (bfloat16 on CPUs with AVX512-BF16/AMX, float16 or bfloat16 on GPUs)
and hands back a float32 field, so the loss and metrics stay in full precision.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class AutocastInferer(Inferer):
    """Call the network under ``torch.autocast(device_type=inputs.device.type, dtype=dtype)``; return float32."""

    def __init__(self, dtype: str = "bfloat16", enabled: bool = True) -> None:
        super().__init__()
        if dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"unknown autocast dtype '{dtype}' (choose from {', '.join(AUTOCAST_DTYPES)})")
        self.dtype = AUTOCAST_DTYPES[dtype]
        self.enabled = enabled

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(device_type=inputs.device.type, dtype=self.dtype, enabled=self.enabled):
            output = network(inputs, *args, **kwargs)
        return output.float()
