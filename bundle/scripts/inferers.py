"""How the Ignite engines turn a network output into a displacement field, with mixed precision on any device.

MONAI's engines only autocast on CUDA (``amp=True``). :class:`FieldInferer` runs the network under
``torch.autocast`` on the inputs' own device when asked (bfloat16 on CPUs with AVX512-BF16/AMX, float16 or bfloat16
on GPUs; on a CPU that would only emulate bfloat16 it runs float32 and warns once), and hands back a float32
displacement field: when the network outputs a stationary velocity field
(``integration_steps`` > 0, see :mod:`scripts.network`) it is integrated by scaling and squaring with MONAI's
``DVF2DDF`` in float32, so the loss, the metrics and the saved fields always see a displacement.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from monai.inferers import Inferer
from monai.networks.blocks import DVF2DDF

from .network import output_integration_steps

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# Measured on a 2-core AMD EPYC with AVX2 only (CoRX-NET embed_dim 12, one pair, torch 2.13): 64^3 fp32 0.48 s,
# bf16 64 s.
BF16_EMULATION_NOTE = "bf16 is emulated there, about 130x slower than fp32 (64^3 pair: 64 s vs 0.48 s)"


@functools.cache
def cpu_runs_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (AVX512-BF16 or AMX); AVX2-only CPUs
    emulate them."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private op gone in a later torch: judge by the vector ISA
        return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2", "NO AVX")


def displacement_from_output(output: torch.Tensor, steps: int) -> torch.Tensor:
    """The network output as a float32 displacement field: itself (``steps=0``) or its scaling-and-squaring
    integral (``DVF2DDF(steps, "bilinear", "border")``; numpy twin: ``scripts.fieldops.integrate_velocity``)."""
    output = output.float()
    if steps <= 0:
        return output
    return DVF2DDF(num_steps=steps, mode="bilinear", padding_mode="border")(output)


class FieldInferer(Inferer):
    """Call the network (under ``torch.autocast`` when ``dtype`` is given and ``enabled``); return a float32
    displacement field, integrating a velocity output with the network's own ``integration_steps``."""

    def __init__(self, dtype: str | None = None, enabled: bool = True) -> None:
        super().__init__()
        if dtype is not None and dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"unknown autocast dtype '{dtype}' (choose from {', '.join(AUTOCAST_DTYPES)})")
        self.dtype = AUTOCAST_DTYPES[dtype] if dtype else None
        self.enabled = enabled and dtype is not None
        self._warned = False

    def _autocast_on(self, device_type: str) -> bool:
        """Whether to autocast here: not bfloat16 on a CPU that would emulate it (float32 instead, warned once)."""
        if not (self.enabled and device_type == "cpu" and self.dtype == torch.bfloat16) or cpu_runs_bf16():
            return self.enabled
        if not self._warned:
            capability = torch.backends.cpu.get_cpu_capability()
            warnings.warn(f"FieldInferer: bfloat16 autocast not used: this CPU ({capability}) has no "
                          f"AVX512-BF16/AMX support, {BF16_EMULATION_NOTE}; running float32",
                          RuntimeWarning, stacklevel=3)
            self._warned = True
        return False

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(device_type=inputs.device.type, dtype=self.dtype or torch.bfloat16,
                            enabled=self._autocast_on(inputs.device.type)):
            output = network(inputs, *args, **kwargs)
        return displacement_from_output(output, output_integration_steps(_unwrap(network)))


def _unwrap(network: Any) -> Any:
    """The module itself behind DistributedDataParallel / DataParallel wrappers."""
    return getattr(network, "module", network)
