"""DES-Y3 survey numbers: source densities, shape noise, calibration, footprint area.

Published values: Amon et al. (2022), Table 1; Gatti et al. (2021).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DESY3_AREA_DEG2",
    "DESY3_M_BIAS",
    "DESY3_N_BINS",
    "DESY3_N_EFF",
    "DESY3_SIGMA_E",
]

#: Number of tomographic source bins.
DESY3_N_BINS = 4
#: Effective source density per bin, arcmin^-2 (Amon et al. 2022, Table 1).
DESY3_N_EFF = np.array([1.476, 1.479, 1.484, 1.461])
#: Shape noise per ellipticity component, per bin.
DESY3_SIGMA_E = np.array([0.243, 0.262, 0.259, 0.301])
#: Multiplicative shear bias per bin.
DESY3_M_BIAS = np.array([-0.63, -1.98, -2.41, -3.69]) * 1e-2
#: Footprint area of the Y3 shape catalogue, deg^2.
DESY3_AREA_DEG2 = 4143.0
