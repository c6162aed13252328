"""A content-addressed cache of work that repeats across the runs of a sweep.

Entries live under ``<output_root>/.cache/<kind>/<key[:2]>/<key>.safetensors``, where the key
is a SHA-256 of the exact inputs: the tensors themselves (dtype, shape and bytes) and
everything else the result depends on (network weights, by a digest of their values; levels,
steps, preprocessing conventions). A changed input gives a new key, so an entry is never
stale; a corrupt entry is recomputed. Entries are written atomically (temporary file, then
rename), so parallel jobs of a sweep can share the cache.

What is cached (see ``tasks/images.py``): Inception features of reference sets and of
frames, denoised (DDIM) points of paths at level t, so methods that do not depend on a
swept solver or metric (LERP, SLERP, ...) are denoised once per sweep, and geodesic solves
of runs without extrapolation (``methods/geodesic.py``), so a sweep over the denoiser or the
evaluation solves each geodesic once. ``cache=false`` bypasses the cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from pathlib import Path

import torch

from scoregeo_cli.io.files import new_file_mode


def digest(*parts) -> str:
    """SHA-256 hex digest of strings, numbers, tensors (dtype, shape, bytes) and modules (their
    state dict, names and values)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.nn.Module):
            for name, value in part.state_dict().items():
                h.update(name.encode())
                _update_tensor(h, value)
        elif isinstance(part, torch.Tensor):
            _update_tensor(h, part)
        else:
            h.update(repr(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


def _update_tensor(h, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():  # the bytes as a buffer, no copy (weights of a large model are hashed in place)
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (weights files); read once per process while the file's
    inode, size and modification time stay the same (the jobs of a sweep share it)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


_FILE_DIGESTS: dict = {}


class Cache:
    """Get-or-compute of tensors by key, counting what was reused.

    Args:
        root: the cache folder (``<output_root>/.cache``); None or ``enabled=False``: every
            lookup misses and nothing is written.
    """

    def __init__(self, root: str | os.PathLike | None, enabled: bool = True):
        self.root = Path(root) if root is not None and enabled else None
        self.hits: Counter = Counter()
        self.misses: Counter = Counter()

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def load(self, kind: str, key: str) -> torch.Tensor | None:
        entry = self.load_many(kind, key)
        return None if entry is None or "value" not in entry else entry["value"]

    def load_many(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        """An entry of several named tensors, or None (absent or damaged)."""
        if self.root is None:
            return None
        path = self._path(kind, key)
        if not path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError):  # a damaged entry is recomputed
            return None

    def store(self, kind: str, key: str, value: torch.Tensor) -> None:
        self.store_many(kind, key, {"value": value})

    def store_many(self, kind: str, key: str, values: dict[str, torch.Tensor]) -> None:
        if self.root is None:
            return
        from safetensors.torch import save_file

        path = self._path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in values.items()}, tmp)
            os.chmod(tmp, new_file_mode())  # not mkstemp's 0600: a shared cache stays readable to others
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def get(self, kind: str, key: str, compute) -> torch.Tensor:
        """The cached value of ``key``, or ``compute()`` stored under it."""
        if self.root is None:
            return compute()
        value = self.load(kind, key)
        if value is not None:
            self.hits[kind] += 1
            return value
        self.misses[kind] += 1
        value = compute()
        self.store(kind, key, value)
        return value

    def count(self, kind: str, hit: bool) -> None:
        if self.root is not None:
            (self.hits if hit else self.misses)[kind] += 1

    def report(self) -> dict:
        """{kind: {"reused": n, "computed": n}} of this run."""
        kinds = sorted(set(self.hits) | set(self.misses))
        return {k: {"reused": self.hits[k], "computed": self.misses[k]} for k in kinds}

    def describe(self) -> str:
        if self.root is None:
            return "cache off"
        parts = [f"{k}: reused {v['reused']} of {v['reused'] + v['computed']}" for k, v in self.report().items()]
        return f"cache {self.root}: " + ("; ".join(parts) if parts else "nothing looked up")
