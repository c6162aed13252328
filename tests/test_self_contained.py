"""The repository carries every file its tests and package read: a bare clone, with no folder
beside it, passes the suite (``.ci/run`` tests in such a clone)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# a path that climbs out of the repository or names a folder beside it
OUTSIDE = re.compile(r"\.\./shared|parents\[2\]|parent\.parent\.parent|REPO\.parent|/work/")


def test_no_test_or_module_reads_a_path_outside_the_repository():
    offenders = []
    for folder in ("tests", "scoregeo_cli", "hydra_plugins", "benchmarks", "examples"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if OUTSIDE.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "paths outside the repository:\n" + "\n".join(offenders)


def test_the_lpips_reference_images_travel_with_their_licence():
    folder = REPO / "tests" / "data" / "lpips"
    assert sorted(p.name for p in folder.glob("*.png")) == ["ex_p0.png", "ex_p1.png", "ex_ref.png"]
    assert "Redistribution and use in source and binary forms" in (folder / "README.md").read_text()
