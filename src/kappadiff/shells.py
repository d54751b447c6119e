"""Readers of PKDGRAV3 lightcone matter shells as released, to overdensity maps.

Two layouts are read:

Gower Street (Jeffrey et al. 2025)
    One directory per simulation holding ``control.par`` (the PKDGRAV3 parameter file,
    Python syntax), one HEALPix particle-count map per time step,
    ``{achOutName}.{step:05d}.lightcone.npy`` (RING ordering; step 1 may be
    ``.incomplete.npy``), and the redshift range of each step: ``z_values.txt`` (CSV with
    the header ``# Step,z_far,z_near,delta_z,cmd_far(Mpc/h),...``) or, failing that, the
    PKDGRAV3 log ``{achOutName}.log`` whose second column is the redshift at the end of
    each step (rows 0..nSteps). Step s spans z_log[s] (near) to z_log[s − 1] (far).
CosmoGridV1 (Kacprzak et al. 2023)
    ``compressed_shells.npz`` holding ``shells`` (particle counts, [n_shell, npix], RING)
    and ``shell_info``, a record array with fields ``lower_z``, ``upper_z``, ``lower_com``,
    ``upper_com``, ``shell_com``.

Counts N become the shell's overdensity δ = N / N̄ − 1, N̄ the mean count per pixel of that
shell, and δ is degraded (averaged) or upgraded (repeated) to the requested nside. Every
error names the file.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import logging
import math
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import healpy as hp
import numpy as np

from .errors import KappadiffInputError
from .products import load_npy

__all__ = [
    "ShellError",
    "ShellSet",
    "counts_to_delta",
    "gowerstreet_shells",
    "cosmogrid_shells",
    "read_control_par",
    "read_shells",
]

log = logging.getLogger(__name__)

#: Layouts :func:`read_shells` understands (the ``sims.source`` config values).
SHELL_SOURCES = ("gowerstreet", "cosmogrid")
#: Fields of CosmoGridV1's ``shell_info`` record array.
COSMOGRID_SHELL_FIELDS = ("lower_z", "upper_z", "lower_com", "upper_com", "shell_com")
#: Relative tolerance for adjacent shells to share an edge (z is stored as float32).
EDGE_RTOL = 1e-4


class ShellError(KappadiffInputError):
    """Lightcone shells are unusable; the message names the file."""


@dataclasses.dataclass(frozen=True)
class ShellSet:
    """Lightcone shells, indexed by increasing redshift; maps are read only on demand.

    Attributes
    ----------
    z_edges : ndarray, shape (n_shell + 1,)
        Shell edges in redshift, increasing; shell s spans z_edges[s]..z_edges[s + 1].
    nside : int
        HEALPix resolution of the stored maps.
    files : tuple of str
        The file shell s comes from (repeated for shells in one file).
    source : str
        Directory or file the set was read from.
    read_counts : callable
        ``read_counts()`` yields ``(s, counts)`` for every shell once, in storage order
        (the order that reads the files in one pass).
    cosmology : dict
        Cosmological parameters recorded with the shells, as named in
        :class:`kappadiff.sims.Cosmology` (``h``, ``omega_m``; empty if none recorded).
    """

    z_edges: np.ndarray
    nside: int
    files: tuple[str, ...]
    source: str
    read_counts: Callable[[], Iterator[tuple[int, np.ndarray]]] = dataclasses.field(repr=False)
    cosmology: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def n_shell(self) -> int:
        return len(self.z_edges) - 1

    def deltas(self, nside: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(s, δ_s)`` of every shell at ``nside`` (RING), one map in memory at a time."""
        for s, counts in self.read_counts():
            delta = counts_to_delta(counts, f"{self.files[s]} (shell {s})")
            del counts
            if nside != self.nside:
                delta = hp.ud_grade(delta, nside, order_in="RING", order_out="RING")
            yield s, delta


def counts_to_delta(counts: np.ndarray, name: str) -> np.ndarray:
    """Overdensity δ = N / N̄ − 1 of a particle-count map.

    Parameters
    ----------
    counts : ndarray, shape (npix,)
        Particle counts per pixel.
    name
        File (and shell) the counts come from, for error messages.

    Returns
    -------
    ndarray, shape (npix,), float64

    Raises
    ------
    ShellError
        If the counts are not finite, negative, or all zero.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if not np.all(np.isfinite(counts)):
        raise ShellError(f"{name}: {int(np.sum(~np.isfinite(counts)))} non-finite counts")
    if np.any(counts < 0):
        raise ShellError(f"{name}: {int(np.sum(counts < 0))} negative particle counts")
    mean = counts.mean()
    if mean == 0:
        raise ShellError(f"{name}: particle-count shell is zero everywhere")
    return counts / mean - 1.0


def _nside_of(npix: int, name: str) -> int:
    nside = math.isqrt(npix // 12)
    if 12 * nside * nside != npix or nside & (nside - 1):
        raise ShellError(f"{name}: {npix} pixels is not a HEALPix map size")
    return nside


def _check_edges(z_near: np.ndarray, z_far: np.ndarray, name: str) -> np.ndarray:
    """Shell edges from near/far redshifts sorted by z; shells must be adjacent."""
    order = np.argsort(z_near)
    z_near, z_far = z_near[order], z_far[order]
    if np.any(z_far <= z_near):
        raise ShellError(f"{name}: shells with far redshift <= near redshift")
    gaps = ~np.isclose(z_far[:-1], z_near[1:], rtol=EDGE_RTOL, atol=1e-6)
    if np.any(gaps):
        raise ShellError(f"{name}: {int(gaps.sum())} gaps or overlaps between adjacent shells")
    return np.concatenate([z_near[:1], z_far])


# --- Gower Street -------------------------------------------------------------------------


class _ParEvaluator(ast.NodeVisitor):
    """Evaluate the assignments of a PKDGRAV3 parameter file without executing it."""

    _binary = {
        ast.Add: lambda a, b: a + b,
        ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b,
        ast.Pow: lambda a, b: a**b,
    }

    def __init__(self, path: str):
        self.path = path
        self.values: dict[str, object] = {}

    def fail(self, node: ast.AST, what: str):
        raise ShellError(f"{self.path}, line {getattr(node, 'lineno', '?')}: {what}")

    def evaluate(self, node: ast.AST):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.values:
                self.fail(node, f"unknown name {node.id!r}")
            return self.values[node.id]
        if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "math":
            return getattr(math, node.attr)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.evaluate(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in self._binary:
            return self._binary[type(node.op)](self.evaluate(node.left), self.evaluate(node.right))
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.evaluate(e) for e in node.elts]
        if isinstance(node, ast.Call) and getattr(node.func, "value", None) is not None:
            if getattr(node.func.value, "id", None) == "math":
                return getattr(math, node.func.attr)(*[self.evaluate(a) for a in node.args])
        self.fail(node, f"unsupported expression {ast.dump(node)[:60]}")

    def run(self, tree: ast.Module) -> dict[str, object]:
        for statement in tree.body:
            if isinstance(statement, (ast.Import, ast.ImportFrom)):
                continue
            if not (
                isinstance(statement, ast.Assign)
                and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)
            ):
                self.fail(statement, "only `name = value` assignments are allowed")
            self.values[statement.targets[0].id] = self.evaluate(statement.value)
        return self.values


def read_control_par(path: str | os.PathLike) -> dict[str, object]:
    """Parameters of a PKDGRAV3 ``control.par`` (Python assignments; ``math`` allowed)."""
    path = os.fspath(path)
    with open(path) as f:
        source = f.read()
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise ShellError(f"{path}: not a PKDGRAV3 parameter file: {exc}") from exc
    return _ParEvaluator(path).run(tree)


def _gowerstreet_redshifts(directory: Path, outname: str, n_steps: int | None) -> dict:
    """{step: (z_near, z_far)} from z_values.txt or the PKDGRAV3 log."""
    z_values = directory / "z_values.txt"
    log_file = directory / f"{outname}.log"
    if z_values.exists():
        table = np.loadtxt(z_values, delimiter=",", comments="#", ndmin=2)
        if table.shape[1] < 3:
            raise ShellError(f"{z_values}: expected columns Step,z_far,z_near,...")
        return {int(s): (near, far) for s, far, near in table[:, :3]}
    if log_file.exists():
        z = np.loadtxt(log_file, usecols=1, ndmin=1)
        if n_steps is not None and z.shape != (n_steps + 1,):
            raise ShellError(
                f"{log_file}: {z.size} redshifts, but control.par has nSteps = {n_steps} "
                f"(expected {n_steps + 1})"
            )
        # the last step ends at z = 0 up to rounding (±1e-16 in the log)
        z = np.where(np.abs(z) < 1e-10, 0.0, z)
        return {s: (float(z[s]), float(z[s - 1])) for s in range(1, z.size)}
    raise ShellError(
        f"{directory}: missing redshift information: neither z_values.txt nor {outname}.log"
    )


def gowerstreet_shells(directory: str | os.PathLike, zmax: float | None = None) -> ShellSet:
    """Index a Gower Street simulation directory (see the module notes for the layout).

    Parameters
    ----------
    directory
        The simulation directory, holding ``control.par``.
    zmax
        Keep only shells whose near edge is below ``zmax`` (matter beyond every source
        does not lens it), so far shells are never read.

    Returns
    -------
    ShellSet
        Shells sorted by increasing redshift; maps are loaded lazily.

    Raises
    ------
    ShellError
        Missing control.par or shells, missing redshift information for a shell file,
        shells of mixed nside, gaps between shells.
    """
    directory = Path(directory)
    par_path = directory / "control.par"
    if not par_path.exists():
        raise ShellError(f"{directory}: no control.par (not a Gower Street simulation)")
    par = read_control_par(par_path)
    outname = str(par.get("achOutName", "run"))
    n_steps = par.get("nSteps")
    pattern = re.compile(rf"^{re.escape(outname)}\.(\d{{5}})\.(lightcone|incomplete)\.npy$")
    files = {}
    for p in directory.iterdir():
        m = pattern.match(p.name)
        if m:
            files[int(m.group(1))] = p
    if not files:
        raise ShellError(f"{directory}: no {outname}.NNNNN.lightcone.npy shells")
    redshifts = _gowerstreet_redshifts(directory, outname, n_steps)
    missing = sorted(s for s in files if s not in redshifts)
    if missing:
        raise ShellError(
            f"{files[missing[0]]}: missing redshift information for step {missing[0]} "
            f"({len(missing)} shell files without redshifts)"
        )
    steps = [s for s in files if zmax is None or redshifts[s][0] < zmax]
    if not steps:
        raise ShellError(f"{directory}: no shell nearer than z = {zmax}")
    near = np.array([redshifts[s][0] for s in steps])
    far = np.array([redshifts[s][1] for s in steps])
    order = np.argsort(near)
    steps = [steps[i] for i in order]
    z_edges = _check_edges(near[order], far[order], os.fspath(directory))

    nside = None
    for s in steps:
        npix = load_npy(files[s], mmap_mode="r").shape
        if len(npix) != 1:
            raise ShellError(f"{files[s]}: shape {npix} is not one HEALPix map")
        this = _nside_of(npix[0], os.fspath(files[s]))
        if nside is None:
            nside, first = this, files[s]
        elif this != nside:
            raise ShellError(
                f"{files[s]}: nside {this}, but {first.name} has nside {nside} (mixed nside)"
            )
    par_nside = par.get("nSideHealpix")
    if par_nside is not None and int(par_nside) != nside:
        raise ShellError(f"{par_path}: nSideHealpix = {par_nside}, but the shells have {nside}")
    return ShellSet(
        z_edges=z_edges,
        nside=nside,
        files=tuple(os.fspath(files[s]) for s in steps),
        source=os.fspath(directory),
        read_counts=functools.partial(_read_npy_files, tuple(files[s] for s in steps)),
        cosmology={
            name: float(par[key])
            for name, key in (("h", "h"), ("omega_m", "dOmega0"))
            if key in par
        },
    )


def _read_npy_files(paths: tuple[Path, ...]) -> Iterator[tuple[int, np.ndarray]]:
    for s, path in enumerate(paths):
        yield s, load_npy(path)


# --- CosmoGridV1 --------------------------------------------------------------------------


def cosmogrid_shells(path: str | os.PathLike, zmax: float | None = None) -> ShellSet:
    """Index a CosmoGridV1 ``compressed_shells.npz`` (see the module notes).

    Parameters
    ----------
    path
        The ``.npz`` file.
    zmax
        Keep only shells whose lower edge is below ``zmax``.

    Returns
    -------
    ShellSet

    Raises
    ------
    ShellError
        Missing arrays or ``shell_info`` fields, a shell count that disagrees with
        ``shell_info``, maps that are not HEALPix, gaps between shells.
    """
    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as data:
        for key in ("shells", "shell_info"):
            if key not in data.files:
                raise ShellError(f"{path}: no array '{key}' (found {data.files})")
        info = data["shell_info"]
    shape = _npz_shape(path, "shells")
    names = info.dtype.names or ()
    missing = [f for f in ("lower_z", "upper_z") if f not in names]
    if missing:
        raise ShellError(
            f"{path}: missing redshift information: shell_info lacks {missing} (has {names})"
        )
    if len(shape) != 2:
        raise ShellError(f"{path}: 'shells' has shape {shape}, expected [n_shell, npix]")
    if shape[0] != info.size:
        raise ShellError(f"{path}: {shape[0]} shells but {info.size} shell_info records")
    nside = _nside_of(shape[1], path)
    lower = np.asarray(info["lower_z"], float)
    upper = np.asarray(info["upper_z"], float)
    keep = np.flatnonzero(lower < zmax) if zmax is not None else np.arange(info.size)
    if keep.size == 0:
        raise ShellError(f"{path}: no shell nearer than z = {zmax}")
    keep = keep[np.argsort(lower[keep])]
    z_edges = _check_edges(lower[keep], upper[keep], path)
    return ShellSet(
        z_edges=z_edges,
        nside=nside,
        files=tuple(path for _ in keep),
        source=path,
        read_counts=functools.partial(_read_npz_rows, path, "shells", tuple(int(i) for i in keep)),
    )


def _npy_header(f, path: str, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the header of an npy stream (left positioned at the data)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if fortran:
        raise ShellError(f"{path}: '{key}' is stored in Fortran order; expected C order")
    return shape, dtype


def _npz_shape(path: str, key: str) -> tuple[int, ...]:
    """Shape of an array in an .npz without decompressing it."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
        return _npy_header(f, path, key)[0]


def _read_npz_rows(path: str, key: str, rows: tuple[int, ...]) -> Iterator[tuple[int, np.ndarray]]:
    """Stream the wanted rows of a 2-D array in an .npz, one row in memory at a time.

    ``np.load`` would decompress the whole stack (tens of GB at nside 2048), so the npy
    member is read sequentially from the zip archive instead. Yields ``(s, row)`` with s
    the position of the row in ``rows``, in file order.
    """
    position = {row: s for s, row in enumerate(rows)}
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
        shape, dtype = _npy_header(f, path, key)
        row_bytes = shape[1] * dtype.itemsize
        for row in range(max(rows) + 1):
            buffer = f.read(row_bytes)
            if len(buffer) != row_bytes:
                raise ShellError(f"{path}: '{key}' ends within shell {row}")
            if row in position:
                yield position[row], np.frombuffer(buffer, dtype=dtype)


def read_shells(source: str, path: str | os.PathLike, zmax: float | None = None) -> ShellSet:
    """Index lightcone shells of the given layout (``gowerstreet`` or ``cosmogrid``)."""
    if source == "gowerstreet":
        return gowerstreet_shells(path, zmax)
    if source == "cosmogrid":
        return cosmogrid_shells(path, zmax)
    raise ValueError(f"unknown shell source {source!r}; expected one of {SHELL_SOURCES}")
