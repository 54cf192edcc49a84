"""Tissue codes of the fine anatomy volume: each code has a label, a CT number and a kinetic compartment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spec import LABELS, MAX_TUMOURS, TUMOUR_LABEL_BASE


@dataclass(frozen=True)
class Tissue:
    """One tissue class: label (CONVENTIONS), mean HU, compartment name (None: no activity), uptake scale."""

    name: str
    label: int
    hu: float
    compartment: str | None
    scale: float = 1.0


# fixed codes (uint8); tumour k uses codes TUMOUR_CODE_BASE + 2k (viable) and + 2k + 1 (necrotic core)
TISSUES: dict[int, Tissue] = {
    0: Tissue("air", LABELS["background"], -1000.0, None),
    1: Tissue("subcutaneous_fat", LABELS["body"], -105.0, "remainder", 0.3),
    2: Tissue("visceral_fat", LABELS["body"], -85.0, "remainder", 0.5),
    3: Tissue("muscle", LABELS["muscle"], 50.0, "remainder", 1.0),
    4: Tissue("lung", LABELS["lungs"], -840.0, "remainder", 0.25),
    5: Tissue("liver", LABELS["liver"], 58.0, "liver"),
    6: Tissue("spleen", LABELS["spleen"], 48.0, "spleen"),
    7: Tissue("kidney_cortex", LABELS["kidney_cortex"], 35.0, "kidney_cortex"),
    8: Tissue("kidney_medulla", LABELS["kidney_medulla"], 28.0, "kidney_medulla"),
    9: Tissue("urine", LABELS["bladder"], 8.0, "bladder"),
    10: Tissue("cancellous_bone", LABELS["bone"], 260.0, "remainder", 0.6),
    11: Tissue("cortical_bone", LABELS["bone"], 750.0, "remainder", 0.15),
    12: Tissue("bowel", LABELS["bowel"], 25.0, "remainder", 1.6),
    13: Tissue("bowel_gas", LABELS["bowel"], -850.0, None),
    14: Tissue("blood", LABELS["body"], 42.0, "blood"),
    15: Tissue("pancreas", LABELS["body"], 40.0, "remainder", 2.0),
    16: Tissue("soft_tissue", LABELS["body"], 30.0, "remainder", 1.0),
    17: Tissue("disc", LABELS["body"], 85.0, "remainder", 0.4),
}
CODE = {t.name: c for c, t in TISSUES.items()}
TUMOUR_CODE_BASE = 32
TUMOUR_HU = {"liver": 42.0, "pancreas": 38.0, "node": 36.0, "mesentery": 40.0, "bone": 420.0}
NECROTIC_HU = 18.0


def tumour_codes(k: int) -> tuple[int, int]:
    """(viable, necrotic) codes of tumour k (0-based)."""
    if not 0 <= k < MAX_TUMOURS:
        raise ValueError(f"tumour index {k} out of range 0..{MAX_TUMOURS - 1}")
    return TUMOUR_CODE_BASE + 2 * k, TUMOUR_CODE_BASE + 2 * k + 1


@dataclass(frozen=True)
class TissueTable:
    """Per-patient lookup tables indexed by code (256 entries)."""

    label: np.ndarray  # uint8
    hu: np.ndarray  # float32
    compartment: tuple[str | None, ...]
    scale: np.ndarray  # float64
    names: tuple[str, ...]

    def lut(self, values: dict[str, float]) -> np.ndarray:
        """A float32 table code -> scale * values[compartment] (0 where no compartment)."""
        out = np.zeros(256, np.float64)
        for code, comp in enumerate(self.compartment):
            if comp is not None:
                out[code] = self.scale[code] * values[comp]
        return out.astype(np.float32)


def build_table(rng: np.random.Generator, tumours: list[tuple[str, float]]) -> TissueTable:
    """Tables for a patient; ``tumours`` is a list of (site, necrotic uptake fraction) per tumour."""
    label = np.zeros(256, np.uint8)
    hu = np.full(256, -1000.0, np.float32)
    comp: list[str | None] = [None] * 256
    scale = np.zeros(256)
    names = ["unused"] * 256
    for code, t in TISSUES.items():
        label[code] = t.label
        jitter = 0.0 if t.hu <= -800 else rng.normal(0.0, 8.0 if t.hu < -50 else 3.0)
        hu[code] = t.hu + jitter
        comp[code], scale[code], names[code] = t.compartment, t.scale, t.name
    for k, (site, necrotic_fraction) in enumerate(tumours):
        cv, cn = tumour_codes(k)
        label[cv] = label[cn] = TUMOUR_LABEL_BASE + k
        hu[cv] = TUMOUR_HU[site] + rng.normal(0.0, 4.0)
        hu[cn] = NECROTIC_HU + rng.normal(0.0, 3.0)
        comp[cv] = comp[cn] = f"tumour_{k + 1}"
        scale[cv], scale[cn] = 1.0, necrotic_fraction
        names[cv], names[cn] = f"tumour_{k + 1}", f"tumour_{k + 1}_necrotic"
    return TissueTable(label, hu, tuple(comp), scale, tuple(names))
