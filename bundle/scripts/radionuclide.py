"""177Lu physical data, defined once for the bundle (phantom) and the client (``corx.dosimetry.physics``).

Source: ICRP Publication 107 (2008): half-life 6.647 d; mean energies emitted per decay.
"""

from __future__ import annotations

import math

#: 177Lu half-life (h), ICRP 107: 6.647 d = 159.528 h.
LU177_HALF_LIFE_H: float = 6.647 * 24.0
#: Physical decay constant (1/h), ln 2 / T_1/2 = 4.345e-3 /h.
LU177_LAMBDA_PER_H: float = math.log(2.0) / LU177_HALF_LIFE_H
#: Mean energy emitted as electrons (beta, internal conversion, Auger) per decay, MeV (ICRP 107).
LU177_ELECTRON_MEV: float = 0.14792
#: Mean energy emitted as photons per decay, MeV (ICRP 107).
LU177_PHOTON_MEV: float = 0.03510
