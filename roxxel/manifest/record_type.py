"""A dataset's record type: the NumPy dtype (and optional fixed shape) of its records.

A typed dataset declares it in two reserved keys of the manifest's ``meta`` object::

    "meta": {"dtype": "<f4", "shape": [768]}

``dtype`` is a NumPy dtype string of a plain number type (``bool``, signed or unsigned
integers, floats, complex numbers; any byte order, e.g. ``"<f4"``, ``"int32"``);
``shape``, if present, is a list of positive integers (``[]``: one value per record),
and every record is exactly one array of that shape. Without ``shape`` a record is a
1-D array of any length (int32 token documents, say). Keeping the declaration in
``meta`` leaves the manifest readable by every reader of manifest version 1: readers
that do not know it see two more ``meta`` keys; ``roxxel pack --format npy`` already
writes them.

Both keys are hostile input: :meth:`RecordType.from_meta` refuses anything but the
above (object, string, datetime, structured and sub-array dtypes, bools or negative
numbers in a shape) with a :class:`~roxxel.errors.ManifestError` naming the field and
the value it got.

A record type means the same bytes on every platform, so types whose size or format
differs across platforms are refused too, wherever they come from (a manifest, or
``Writer(dtype=...)``): extended precision (``longdouble``, ``float128``, ``complex256``:
80-bit x87 numbers padded to 12 or 16 bytes on x86, IEEE quadruple on other machines,
plain doubles on others), and spellings of a platform's C ``long`` or pointer-sized
integer (``"long"``, ``"int"``, ``"int_"``, ``"intp"``, ``"uint"``, ``"l"``, ``"p"``, ...:
8 bytes here, 4 on Windows or 32-bit machines). Spell the size instead (``"<i8"``,
``"int64"``, ``"float64"``); a type object (``np.int_``) is taken as the size it has here,
which is what the manifest records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ManifestError
from ._report import error, expected, reporting_source

__all__ = ["DTYPE_KEY", "SHAPE_KEY", "RecordType"]

DTYPE_KEY = "dtype"
SHAPE_KEY = "shape"

_NUMBER_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex numbers
_MAX_DTYPE_CHARS = 32
_MAX_DIMS = 32  # NumPy allows 64; a record of more dimensions than this is not a record
_MAX_RECORD_BYTES = 1 << 48
# NumPy spellings of a C long or a pointer-sized integer (bare, or after a byte order):
# their size depends on the platform that reads them
_PLATFORM_SIZED = frozenset({"l", "L", "p", "P", "n", "N", "int", "uint", "int_", "long", "ulong", "intp",
                             "uintp", "int0", "uint0"})
_ONE_SIZE = "a dtype of one size on every platform (e.g. '<i8', 'int64', 'float64'; not a C long, intp or " \
            "extended precision)"


@dataclass(frozen=True)
class RecordType:
    """The dtype of a dataset's records and, for fixed-size records, their shape.

    ``shape`` is None for variable-length records (1-D arrays of any length), else the
    shape every record has. Construction validates both (see the module docstring).
    """

    dtype: np.dtype[Any]
    shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _check_dtype(self.dtype, DTYPE_KEY))
        if self.shape is not None:
            object.__setattr__(self, "shape", _check_shape(self.shape, SHAPE_KEY, self.dtype.itemsize))

    @classmethod
    def of(cls, dtype: npt.DTypeLike, shape: Sequence[int] | int | None = None) -> RecordType:
        """The record type ``dtype`` (anything ``numpy.dtype`` takes that names a plain
        number type) with ``shape`` (an int stands for a 1-tuple; None: variable length)."""
        try:
            parsed = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"dtype must name a NumPy number type, got {dtype!r}") from exc
        if isinstance(dtype, str) and _platform_sized(dtype):
            raise ValueError(f"{DTYPE_KEY}: expected {_ONE_SIZE}, got {dtype!r}")
        if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
            shape = (int(shape),)
        if shape is not None and not isinstance(shape, (list, tuple)):
            raise TypeError(f"shape must be a sequence of positive integers or None, got {shape!r}")
        try:
            return cls(parsed, None if shape is None else tuple(shape))
        except ManifestError as exc:  # an argument, not a manifest: the same words, a plain error
            raise ValueError(str(exc).removeprefix("manifest: ")) from None

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str | None = None) -> RecordType | None:
        """The record type a manifest's ``meta`` declares, or None if it declares none.

        ManifestError naming ``source``, ``meta.dtype`` or ``meta.shape`` and the value
        for anything but a plain number dtype string and a list of positive integers.
        """
        with reporting_source(source):
            if DTYPE_KEY not in meta:
                if SHAPE_KEY in meta:
                    raise error(f"meta.{SHAPE_KEY}", "is set, but meta.dtype is not: a shape needs a dtype")
                return None
            value = meta[DTYPE_KEY]
            if not isinstance(value, str) or len(value) > _MAX_DTYPE_CHARS:
                raise expected(f"meta.{DTYPE_KEY}", "a NumPy dtype string of a number type", value)
            try:
                dtype = np.dtype(value)
            except (TypeError, ValueError, SyntaxError):
                raise expected(f"meta.{DTYPE_KEY}", "a NumPy dtype string of a number type", value) from None
            if _platform_sized(value):
                raise expected(f"meta.{DTYPE_KEY}", _ONE_SIZE, value)
            shape = meta.get(SHAPE_KEY)
            if shape is not None and not isinstance(shape, list):
                raise expected(f"meta.{SHAPE_KEY}", "a list of positive integers", shape)
            return cls(_check_dtype(dtype, f"meta.{DTYPE_KEY}"),
                       None if shape is None else _check_shape(shape, f"meta.{SHAPE_KEY}", dtype.itemsize))

    def to_meta(self) -> dict[str, Any]:
        """The ``meta`` keys that declare this type (``dtype`` as NumPy's ``str``)."""
        out: dict[str, Any] = {DTYPE_KEY: self.dtype.str}
        if self.shape is not None:
            out[SHAPE_KEY] = list(self.shape)
        return out

    @property
    def fixed(self) -> bool:
        """Whether every record has the one shape :attr:`shape`."""
        return self.shape is not None

    @property
    def record_bytes(self) -> int | None:
        """Bytes of one record of a fixed shape (None for variable-length records)."""
        if self.shape is None:
            return None
        return self.dtype.itemsize * math.prod(self.shape)

    def describe(self) -> str:
        """``"float32 of shape (768,)"`` or ``"int32 (variable length)"``, for messages."""
        if self.shape is None:
            return f"{self.dtype} (variable length)"
        return f"{self.dtype} of shape {self.shape}"


def _check_dtype(dtype: object, path: str) -> np.dtype[Any]:
    if not isinstance(dtype, np.dtype):
        raise expected(path, "a numpy.dtype", dtype)
    if dtype.kind not in _NUMBER_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise expected(path, "a plain number dtype (bool, int, uint, float or complex)", dtype.str)
    if dtype.itemsize == 0:
        raise expected(path, "a dtype of at least one byte", dtype.str)
    if dtype.itemsize > {"f": 8, "c": 16}.get(dtype.kind, 8):  # extended precision: x87, IEEE quad, ...
        raise expected(path, _ONE_SIZE, dtype.str)
    return dtype


def _platform_sized(spelling: str) -> bool:
    """Whether a dtype string spells a type whose size depends on the platform."""
    return spelling.lstrip("<>=|!").strip() in _PLATFORM_SIZED


def _check_shape(shape: object, path: str, itemsize: int) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > _MAX_DIMS:
        raise expected(path, f"a list of at most {_MAX_DIMS} positive integers", shape)
    dims = []
    for i, n in enumerate(shape):
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
            raise expected(f"{path}[{i}]", "a positive integer", n)
        dims.append(int(n))
    if math.prod(dims) * itemsize > _MAX_RECORD_BYTES:
        raise expected(path, f"a record of at most 2**48 bytes ({itemsize} bytes a value)", shape)
    return tuple(dims)
