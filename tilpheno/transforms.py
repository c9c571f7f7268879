"""Scale transforms for cytometry data: Logicle, Arcsinh and Linear.

Conventions
-----------
* Inputs are compensated channel values on the instrument's linear scale (arbitrary units,
  ``$PnR`` = 262144 on the demo Fortessa). Outputs are float64.
* ``Logicle`` follows Parks, Roederer & Moore (Cytometry A 2006) with the parameterisation of
  Moore & Parks (Cytometry A 2012) and Gating-ML 2.0: ``T`` top of scale, ``W`` linearisation
  width in decades, ``M`` decades of the full scale, ``A`` extra negative decades. The output is
  Gating-ML's normalised scale: ``T`` maps to 1.0, 0 maps to ``W / (M + A)``; values above ``T``
  map above 1 and negative values below ``W / (M + A)`` (the scale is not clipped).
* ``Arcsinh(cofactor)``: ``asinh(x / cofactor)``.
* ``Linear()``: identity.

Every transform is a frozen dataclass with vectorised ``apply(x)`` and ``inverse(y)`` and a
JSON-able ``to_dict()``; ``transform_from_dict`` is its inverse (used by strategy files).

Fast logicle evaluation
-----------------------
The inverse of logicle, the biexponential ``B(y) = a e^{b y} - c e^{-d y} + f``, has a closed
form, so ``inverse`` is exact. ``apply`` uses a table: nodes are the float64 numbers whose
mantissa has only its top ``_MANTISSA_BITS`` bits set (256 nodes per octave, relative spacing
<= 0.4 %), from 2**-30 to 2**40. For ``|x|`` in that range the table index and the
interpolation fraction come straight from the bit pattern of ``|x|`` (no search), and the
logicle value is linearly interpolated between the exact node values (solved once per
parameter set by bisection on ``B``). Negative values use the symmetry
``logicle(-x) = 2 * logicle(0) - logicle(x)``. Measured error against
``flowutils.transforms.logicle`` is below ``LOGICLE_TOLERANCE`` (absolute, on the 0..1 scale)
over -T..10 T; see tests/test_transforms.py.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache

import numpy as np

LOGICLE_TOLERANCE = 1e-6
"""Absolute agreement of ``Logicle.apply`` with the exact logicle, on the normalised scale."""

_MANTISSA_BITS = 8                     # table nodes per octave = 2**_MANTISSA_BITS
_SHIFT = 52 - _MANTISSA_BITS           # float64 has a 52-bit mantissa
_LOW_EXP, _HIGH_EXP = -30, 40          # table covers |x| in [2**-30, 2**40]


def _bits(value: float) -> int:
    return int(np.array(value, dtype=np.float64).view(np.int64))


_BITS_LOW = _bits(2.0**_LOW_EXP)
_BITS_HIGH = _bits(2.0**_HIGH_EXP)
_NODE0 = _BITS_LOW >> _SHIFT
_N_NODES = (_BITS_HIGH >> _SHIFT) - _NODE0 + 1
_FRACTION_MASK = (1 << _SHIFT) - 1
_FRACTION_SCALE = 1.0 / (1 << _SHIFT)


@dataclass(frozen=True)
class _LogicleCoefficients:
    """Coefficients of the biexponential B(y) = a e^{b y} - c e^{-d y} + f (Moore & Parks 2012)."""

    a: float
    b: float
    c: float
    d: float
    f: float
    x1: float  # logicle(0), the centre of symmetry


def _solve_d(b: float, w: float) -> float:
    """Root of 2 (ln d - ln b) + w (b + d) = 0 in (0, b], by bisection (exact to float precision)."""
    if w == 0:
        return b
    lo, hi = 0.0, b
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 2.0 * (np.log(mid) - np.log(b)) + w * (b + mid) < 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-16 * b:
            break
    return 0.5 * (lo + hi)


@lru_cache(maxsize=64)
def _coefficients(t: float, w: float, m: float, a: float) -> _LogicleCoefficients:
    wn = w / (m + a)
    x2 = a / (m + a)
    x1 = x2 + wn
    x0 = x2 + 2.0 * wn
    b = (m + a) * np.log(10.0)
    d = _solve_d(b, wn)
    c_a = np.exp(x0 * (b + d))
    mf_a = np.exp(b * x1) - c_a / np.exp(d * x1)
    aa = t / ((np.exp(b) - mf_a) - c_a / np.exp(d))
    return _LogicleCoefficients(a=aa, b=b, c=c_a * aa, d=d, f=-mf_a * aa, x1=x1)


def _biexponential(y: np.ndarray, k: _LogicleCoefficients, *, overwrite: bool = False) -> np.ndarray:
    """B(y) for y >= x1 (the branch used on the non-negative half), linear units: a float64 array of
    ``y``'s shape; ``overwrite``: ``y`` (float64, the caller's temporary) may be written over and is
    then the second term's array, else it is left as it is. Each term's steps in place: the same
    operations in the same order as ``a * exp(b * y) - c * exp(-d * y) + f`` written out (a product
    of two numbers is the same either way round), so the same bits, without that expression's six
    full-size temporaries (memory traffic, which slows a worker most when another runs beside it)."""
    grow = np.multiply(y, k.b, out=np.empty_like(y, dtype=np.float64))
    np.exp(grow, out=grow)
    grow *= k.a
    decay = np.multiply(y, -k.d, out=y if overwrite else np.empty_like(y, dtype=np.float64))
    np.exp(decay, out=decay)
    decay *= k.c
    grow -= decay
    grow += k.f
    return grow


@lru_cache(maxsize=64)
def _logicle_table(t: float, w: float, m: float, a: float) -> tuple[np.ndarray, np.ndarray]:
    """``logicle(node) - logicle(0)`` at the table nodes (exact), and the step to the next node,
    each at index ``node bits >> _SHIFT``."""
    k = _coefficients(t, w, m, a)
    node_bits = (np.arange(_N_NODES, dtype=np.int64) + _NODE0) << _SHIFT
    x = node_bits.view(np.float64)
    lo = np.full(x.shape, k.x1)
    hi = np.full(x.shape, k.x1 + 1.0)
    while True:  # grow the bracket until B(hi) >= x for every node
        short = _biexponential(hi, k) < x
        if not short.any():
            break
        hi[short] = k.x1 + 2.0 * (hi[short] - k.x1)
    for _ in range(64):  # bisection: 64 halvings reach float64 resolution on any bracket used here
        mid = 0.5 * (lo + hi)
        below = _biexponential(mid, k) < x
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    values = 0.5 * (lo + hi) - k.x1
    # Stored from index _NODE0 on, so that the top bits of |x| index the tables without an
    # offset; the unused head is never touched (np.zeros pages are allocated lazily).
    offset = np.zeros(_NODE0 + _N_NODES)
    step = np.zeros(_NODE0 + _N_NODES)
    offset[_NODE0:] = values
    step[_NODE0:] = np.append(np.diff(values), 0.0)
    offset.setflags(write=False)
    step.setflags(write=False)
    return offset, step


_BLOCK = 16000  # values per block in Logicle.apply: temporaries < 128 KiB (cache-resident, heap- not mmap-allocated)


_LOW_FLOAT, _HIGH_FLOAT = 2.0**_LOW_EXP, 2.0**_HIGH_EXP
_SIGN_BIT = np.int64(-(2**63))


def _logicle_block(x: np.ndarray, out: np.ndarray, tables: tuple[np.ndarray, np.ndarray], x1: float) -> None:
    """``out[:] = logicle(x)`` for one block (``out`` may be ``x``); see the module docstring."""
    try:
        _logicle_finite(x, out, tables, x1, None)
    except IndexError:
        # A NaN's bit pattern indexes past the table (nothing is written to ``out`` before the
        # table look-ups), so NaNs cost nothing on blocks without any: redo this block with them
        # set aside.
        nan = np.isnan(x)
        _logicle_finite(x, out, tables, x1, nan)
        np.putmask(out, nan, np.nan)


def _logicle_finite(x: np.ndarray, out: np.ndarray, tables, x1: float, nan: np.ndarray | None) -> None:
    offset, step = tables        # indexed by the top bits of |x| directly (see _logicle_table)
    work = np.abs(x)
    if nan is not None:
        np.putmask(work, nan, 0.0)
    # Clamping the non-negative floats clamps their bit patterns alike (same order); infinities
    # saturate at 2**40, NaN stays NaN.
    np.clip(work, _LOW_FLOAT, _HIGH_FLOAT, out=work)
    bits = work.view(np.int64)
    index = bits >> _SHIFT
    step_at = step.take(index)   # IndexError for a NaN
    offset_at = offset.take(index)
    bits &= _FRACTION_MASK
    np.multiply(bits, _FRACTION_SCALE, out=work)   # position between node index and index + 1, in [0, 1)
    work *= step_at
    work += offset_at            # logicle(|x|) - logicle(0) >= 0
    # logicle(-x) - logicle(0) = -(logicle(x) - logicle(0)): put x's sign bit on the non-negative
    # value (as np.copysign, with one integer operation less)
    np.bitwise_or(bits, np.bitwise_and(x.view(np.int64), _SIGN_BIT), out=out.view(np.int64))
    out += x1


@dataclass(frozen=True)
class Logicle:
    """Logicle transform (Parks 2006; Gating-ML 2.0 normalised output, T -> 1.0).

    Parameters: ``t`` top of scale (linear units), ``w`` linear-region width (decades),
    ``m`` total decades, ``a`` additional negative decades. Requires ``t > 0``, ``m > 0``,
    ``0 <= w <= m / 2`` and ``-w <= a <= m - 2 w`` (Gating-ML constraints).
    """

    t: float = 262144.0
    w: float = 0.5
    m: float = 4.5
    a: float = 0.0
    kind: str = field(default="logicle", init=False)

    def __post_init__(self):
        for name in ("t", "w", "m", "a"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not (self.t > 0 and self.m > 0 and 0 <= self.w <= self.m / 2 and -self.w <= self.a <= self.m - 2 * self.w):
            raise ValueError(
                f"logicle parameters out of range: t={self.t} w={self.w} m={self.m} a={self.a} "
                "(need t>0, m>0, 0<=w<=m/2, -w<=a<=m-2w)"
            )

    def apply(self, x, out: np.ndarray | None = None) -> np.ndarray:
        """Logicle of ``x`` (linear units) on the normalised scale; float64, same shape.

        NaN stays NaN; ``|x|`` beyond 2**40 (and infinities) saturate at the value for 2**40.
        ``out``: a float64 array of ``x``'s shape to write into; may be ``x`` itself (in place).
        """
        x = np.asarray(x, dtype=np.float64)
        if out is None:
            out = np.empty_like(x)
        elif out.shape != x.shape or out.dtype != np.float64:
            raise ValueError(f"out must be float64 of shape {x.shape}, got {out.dtype} {out.shape}")
        tables = _logicle_table(self.t, self.w, self.m, self.a)
        x1 = _coefficients(self.t, self.w, self.m, self.a).x1
        if not (x.flags.c_contiguous and out.flags.c_contiguous):
            _logicle_block(x, out, tables, x1)   # strided views: one block
            return out
        flat_x, flat_out = x.reshape(-1), out.reshape(-1)   # views (contiguous)
        for start in range(0, flat_x.size, _BLOCK):
            _logicle_block(flat_x[start:start + _BLOCK], flat_out[start:start + _BLOCK], tables, x1)
        return out

    def inverse(self, y) -> np.ndarray:
        """Linear value whose logicle is ``y`` (exact closed form)."""
        y = np.asarray(y, dtype=np.float64)
        k = _coefficients(self.t, self.w, self.m, self.a)
        reflected = y < k.x1
        # np.where, not masked ufuncs (copyto / negative with where=): on a run's arrays those were
        # slower than the two selections they save (stop 63)
        x = _biexponential(np.where(reflected, 2.0 * k.x1 - y, y), k, overwrite=True)
        return np.where(reflected, -x, x)   # logicle(-x) = 2 logicle(0) - logicle(x)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Arcsinh:
    """``asinh(x / cofactor)``; the cofactor is in linear units (150 suits Fortessa-era data)."""

    cofactor: float = 150.0
    kind: str = field(default="arcsinh", init=False)

    def __post_init__(self):
        object.__setattr__(self, "cofactor", float(self.cofactor))
        if not self.cofactor > 0:
            raise ValueError(f"arcsinh cofactor must be > 0, got {self.cofactor}")

    def apply(self, x, out: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if out is None:
            return np.arcsinh(x / self.cofactor)
        np.divide(x, self.cofactor, out=out)
        return np.arcsinh(out, out=out)

    def inverse(self, y) -> np.ndarray:
        return np.sinh(np.asarray(y, dtype=np.float64)) * self.cofactor

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Linear:
    """Identity (scatter channels stay in instrument units)."""

    kind: str = field(default="linear", init=False)

    def apply(self, x, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return np.array(x, dtype=np.float64, copy=True)
        if out is not x:
            np.copyto(out, x)
        return out

    def inverse(self, y) -> np.ndarray:
        return np.array(y, dtype=np.float64, copy=True)

    def to_dict(self) -> dict:
        return asdict(self)


Transform = Logicle | Arcsinh | Linear

_KINDS = {"logicle": Logicle, "arcsinh": Arcsinh, "linear": Linear}


def transform_from_dict(spec: dict) -> Transform:
    """Build a transform from ``{"kind": "logicle", "t": ..., ...}`` (as ``to_dict`` writes).

    Raises ``ValueError`` naming the unknown kind or parameter.
    """
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown transform kind {kind!r}; expected one of {sorted(_KINDS)}")
    cls = _KINDS[kind]
    allowed = {f.name for f in fields(cls) if f.name != "kind"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {kind} transform; allowed: {sorted(allowed)}")
    return cls(**spec)


def default_transform(dimension: str) -> Transform:
    """Default per dimension: scatter (FSC*/SSC*) and Time linear, fluorescence logicle(262144, 0.5, 4.5, 0)."""
    upper = dimension.upper()
    if upper.startswith(("FSC", "SSC")) or upper == "TIME":
        return Linear()
    return Logicle()
