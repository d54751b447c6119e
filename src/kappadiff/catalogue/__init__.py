"""Shear catalogues: quality cuts, shear calibration, patch assignment, pixelisation, mocks.

Pure functions on arrays and chunks of galaxies, by concern:

- :mod:`~kappadiff.catalogue.cuts`: :class:`GalaxyChunk`, input checks, row hashes and
  duplicates, the catalogue's content hash, quality cuts, the galaxy :class:`Accounting`;
- :mod:`~kappadiff.catalogue.responses`: metacalibration response sums and the
  :class:`ShearCalibration`;
- :mod:`~kappadiff.catalogue.assignment`: :class:`PatchGrid`, :class:`PatchLookup` and the
  compiled kernels that find each galaxy's patches and pixels;
- :mod:`~kappadiff.catalogue.pixelise`: :func:`pixelise_catalogue` and its
  :class:`ShearAccumulator`;
- :mod:`~kappadiff.catalogue.mock`: mock positions, shears and shapes, whole mock
  catalogues drawn from a simulated sky, and :class:`ShapeNoiseMock`;
- :mod:`~kappadiff.catalogue.io`: the readers and writers of catalogue files (DES-Y3 HDF5,
  FITS) and of the pixelised data patches, imported from there (not re-exported here, so
  that the science modules do not load the file libraries).

Conventions (docs/architecture.md): RA/Dec in degrees; catalogue ellipticities follow DES,
``(e1, e2) = (gamma1, -gamma2)`` of healpy's spin-2 shear maps; patches are gnomonic
``npix x npix`` grids indexed ``[row, col]`` with row growing north and col growing west.
"""

from .assignment import (
    RECORD_BYTES,
    PatchGrid,
    PatchLookup,
    assign_to_patches,
    first_containing_patch,
    patch_lookup,
)
from .cuts import (
    REJECTION_REASONS,
    Accounting,
    BinErrors,
    CatalogueError,
    GalaxyChunk,
    HashedChunks,
    catalogue_extent,
    check_radians,
    count_repeats,
    quality_cut_chunks,
    quality_cuts,
    row_hashes,
)
from .mock import (
    ShapeNoiseMock,
    mock_catalogue,
    mock_positions,
    mock_shapes,
    occupancy_mask,
    shear_at_positions,
)
from .pixelise import (
    ACCUMULATOR_BYTES,
    ShapeModel,
    ShearAccumulator,
    patch_groups,
    pixelise_catalogue,
    record_budget,
)
from .responses import (
    SHEARED_SELECTIONS,
    ResponseSums,
    ShearCalibration,
    apply_shear_calibration,
    shear_calibration_from_sums,
)

__all__ = [
    "ACCUMULATOR_BYTES",
    "RECORD_BYTES",
    "REJECTION_REASONS",
    "SHEARED_SELECTIONS",
    "Accounting",
    "BinErrors",
    "CatalogueError",
    "GalaxyChunk",
    "HashedChunks",
    "PatchGrid",
    "PatchLookup",
    "ResponseSums",
    "ShapeModel",
    "ShapeNoiseMock",
    "ShearAccumulator",
    "ShearCalibration",
    "apply_shear_calibration",
    "assign_to_patches",
    "catalogue_extent",
    "check_radians",
    "count_repeats",
    "first_containing_patch",
    "mock_catalogue",
    "mock_positions",
    "mock_shapes",
    "occupancy_mask",
    "patch_groups",
    "patch_lookup",
    "pixelise_catalogue",
    "quality_cut_chunks",
    "quality_cuts",
    "record_budget",
    "row_hashes",
    "shear_at_positions",
    "shear_calibration_from_sums",
]
