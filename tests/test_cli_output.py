"""What `scoregeo lpips` and `scoregeo fid` print: labelled values on stdout (4 significant
digits for LPIPS), what was read on stderr."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from scoregeo_cli.cli import main

from helpers import LPIPS_IMAGES as REFERENCE  # noqa: E402


def test_lpips_of_two_files_is_labelled_with_four_significant_digits(capsys):
    assert main(["lpips", str(REFERENCE / "ex_ref.png"), str(REFERENCE / "ex_p1.png")]) == 0
    captured = capsys.readouterr()
    assert re.fullmatch(r"lpips_alex: 0\.\d{4}\n", captured.out), captured.out  # 0.1380 style, not a bare 0.138
    # what it read, on stderr (as for folders and `scoregeo fid`)
    assert captured.err == (f"scoregeo lpips: read {REFERENCE / 'ex_ref.png'} and {REFERENCE / 'ex_p1.png'} "
                            "(64x64 px, RGB)\n"), captured.err


def test_top_level_help_says_lpips_takes_files_or_folders(capsys):
    assert main(["--help"]) == 0
    line = next(li for li in capsys.readouterr().out.splitlines() if li.strip().startswith("lpips"))
    assert "two image files" in line and "two folders" in line, line


def test_lpips_of_two_folders_pairs_images_by_name(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    for name in ("ref", "p0", "p1"):
        Image.open(REFERENCE / f"ex_{name}.png").save(tmp_path / "a" / f"{name}.png")
        Image.open(REFERENCE / "ex_ref.png").save(tmp_path / "b" / f"{name}.png")
    Image.open(REFERENCE / "ex_ref.png").save(tmp_path / "a" / "alone.png")  # no namesake: skipped
    assert main(["lpips", str(tmp_path / "a"), str(tmp_path / "b"), "--digits", "3"]) == 0
    captured = capsys.readouterr()
    lines = dict(line.split(": ") for line in captured.out.splitlines())
    assert set(lines) == {"lpips_alex_mean", "lpips_alex_std", "pairs"} and lines["pairs"] == "3"
    assert round(float(lines["lpips_alex_mean"]), 2) == round((0 + 0.722 + 0.138) / 3, 2)
    assert "3 image pairs of the same name (4 images in" in captured.err


def test_fid_says_how_many_images_it_read_from_each_folder(tmp_path, capsys):
    for folder, n in (("real", 3), ("fake", 4)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            Image.new("RGB", (32, 32), color=(40 * i, 80, 200 - 30 * i)).save(tmp_path / folder / f"{i}.png")
    assert main(["fid", str(tmp_path / "real"), str(tmp_path / "fake")]) == 0
    captured = capsys.readouterr()
    assert re.fullmatch(r"fid: \d+\.\d{4}\n", captured.out), captured.out
    assert f"read 3 images from {tmp_path / 'real'} (reference) and 4 from {tmp_path / 'fake'}" in captured.err


def test_a_sphere_run_folder_holds_what_the_readme_lists(tmp_path, monkeypatch, capsys):
    """The README's run folder: a synthetic run writes its record, results, provenance,
    paths.png and DONE; pairs.json and cache.json are image runs' (the README says so)."""
    from helpers import invoke_cli

    code, _, err = invoke_cli(["run", "experiment=sphere", "n_pairs=2", f"output_root={tmp_path}"], monkeypatch,
                              capsys)
    assert code == 0, err
    (run,) = {p.parent for p in tmp_path.rglob("DONE")}
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "DONE", "command.sh", "metrics.jsonl", "paths.png",
                                                     "provenance.json", "summary.json"]
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert ("`pairs.json` and `cache.json` (image runs: the pairs' digits and angles, and what the run reused "
            "from the cache), `provenance.json`") in readme
