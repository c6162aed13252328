"""A wheel carries its configs and recipes: build it, install it into a fresh venv, run there.

The fresh venv sees this environment's dependencies through a path entry (a ``.pth`` line,
which does not activate the editable install), so only scoregeo itself comes from the wheel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_install_runs_from_any_directory(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(REPO)], check=True, capture_output=True, text=True, timeout=600)
    wheel = next(dist.glob("scoregeo-*.whl"))
    with zipfile.ZipFile(wheel) as archive:  # the packaged diffusers folder, subfolders included
        names = set(archive.namelist())
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/config.json", "scheduler/scheduler_config.json",
                 "empty_prompt_embeds.safetensors", "training.json"):
        assert f"scoregeo_cli/checkpoints/ldm_mnist/{part}" in names, part
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import scoregeo_cli.paths as p; print(p.CONF_DIR)"],
                           cwd=work, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the wheel's own copy, not the checkout
    run = subprocess.run([str(python), "-m", "scoregeo_cli.cli", "run", "experiment=sphere", "n_pairs=2",
                          "eval.figure=false", f"output_root={work / 'out'}"],
                         cwd=work, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(next((work / "out").rglob("summary.json")).read_text())
    assert summary["geodesic"]["geodesic_error_max"]["mean"] < 0.01  # the geodesic follows the great circle
    listing = subprocess.run([str(python), "-m", "scoregeo_cli.cli", "reproduce", "--list"], cwd=work,
                             capture_output=True, text=True, timeout=300)
    assert listing.returncode == 0 and "table_synthetic" in listing.stdout, listing.stderr[-2000:]
    report = subprocess.run([str(python), "-m", "scoregeo_cli.cli", "report", "--output-root", str(work / "out")],
                            cwd=work, capture_output=True, text=True, timeout=300)  # the templates come with it
    assert report.returncode == 0, report.stderr[-2000:]
    assert "table_synthetic" in (work / "out" / "report" / "index.html").read_text()
