"""`scoregeo report`: one self-contained HTML page per recipe and an index, built here from
small runs made in a temporary folder (two real sphere runs of two pairs, and an image run
folder written by hand with labelled strips), never from the repository's outputs/.

The browser test opens the pages in headless Chromium (Debian's ``chromium`` and
``chromium-driver`` with Selenium, the test extra) and checks that every image loaded, that
the console shows no error and that a screenshot is not blank. Where no browser is
installed it is skipped, saying why; ``.ci/run`` installs one and sets
SCOREGEO_REQUIRE_BROWSER=1, which turns the skip into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from helpers import invoke_cli

from scoregeo_cli import reproduce
from scoregeo_cli.io.files import atomic_write_json, mark_done
from scoregeo_cli.reporting import tables

SPHERE = "[experiment=sphere, n_pairs=2, eval.geodesic_points=64]"
BOOK = {
    "sphere_demo": f"""\
        title: Sphere <b>demo</b>
        description: Two seeds of the sphere, two pairs each.
        seeds: [0, 1]
        sweeps: [{SPHERE}]
        table:
          groups: [{{label: sphere, run: {SPHERE}}}]
          rows: [geodesic, lerp, slerp]
          columns:
            - {{metric: geodesic_error_max, label: geodesic error (max), better: lower}}
            - {{metric: g_length_ratio, label: g-length ratio, better: 1}}
        figures:
          - name: demo_paths
            file: paths.png
            caption: The paths of seed 0.
            panels: [{{label: sphere, run: {SPHERE}}}]
        """,
    "digits_demo": """\
        title: Digits demo
        seeds: [0]
        sweeps: [[experiment=rotated_mnist, n_pairs=2]]
        table:
          groups: [{label: digits, run: [experiment=rotated_mnist, n_pairs=2]}]
          rows: [geodesic, lerp]
          columns:
            - {metric: psnr, label: PSNR, better: higher}
            - {metric: psnr_minus_lerp, label: ΔPSNR, better: higher, pooled: true}
        """,
    "partial_demo": f"""\
        title: Half finished
        seeds: [0, 1, 2]
        sweeps: [{SPHERE}]
        table:
          groups: [{{label: sphere, run: {SPHERE}}}]
          rows: [geodesic, lerp]
          columns: [{{metric: geodesic_error_max, better: lower}}]
        """,
    "nothing_demo": """\
        title: Never run
        seeds: [0]
        sweeps: [[experiment=circle]]
        table:
          groups: [{label: circle, run: [experiment=circle]}]
          columns: [geodesic_error_max, {metric: psnr_minus_lerp, pooled: true}]
        """,
}


def image_run(run_dir: Path) -> None:
    """A finished rotated-digits run folder as `scoregeo run` leaves one: its recorded
    overrides and config, summary, per-pair rows, two labelled strips, command and DONE."""
    import json

    import torch

    from scoregeo_cli.evaluation.rows import row
    from scoregeo_cli.reporting.figures import save_strip
    from scoregeo_cli.reporting.results import write_results

    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["experiment=rotated_mnist", "n_pairs=2",
                                                                        "seed=0"]))
    rows = [row(p, m, "psnr", 12.0 + p + (0.5 if m == "geodesic" else 0)) for p in range(2) for m in ("geodesic", "lerp")]
    write_results(run_dir, rows)
    (run_dir / "command.sh").write_text("scoregeo run experiment=rotated_mnist n_pairs=2\n")
    generator = torch.Generator().manual_seed(0)
    for p in range(2):
        frames = {name: torch.rand(6, 1, 28, 28, generator=generator) for name in ("truth", "geodesic", "lerp")}
        save_strip(frames, run_dir / "strips" / f"pair_{p:02d}.png", split=4, scale=2,
                   columns=["-30°", "-10°", "10°", "30°", "40°", "50°"],
                   title=f"rotated_mnist pair_{p:02d} (seed 0, t = 400): rotation from -30° to 30°, columns: angle")
    json.loads((run_dir / "summary.json").read_text())
    mark_done(run_dir)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of the four recipes above: {name: html}, the output folder and the runs' root."""
    tmp = tmp_path_factory.mktemp("report")
    book = tmp / "recipes"
    book.mkdir()
    for name, text in BOOK.items():
        (book / f"{name}.yaml").write_text(textwrap.dedent(text))
    out = tmp / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCOREGEO_PROGRESS", "0")
        code, _, _ = invoke_cli(["run", "-m", "experiment=sphere", "n_pairs=2", "eval.geodesic_points=64", "seed=0,1",
                                 f"output_root={out}"], mp)
        assert code == 0
        image_run(out / "rotated_mnist" / "n_pairs=2" / "seed=0")
        mp.setattr(tables, "git_commit", lambda: "abc1234")
        code, _, _ = invoke_cli(["report", "--recipes", str(book), "--output-root", str(out)], mp)
        assert code == 0
    pages = {p.stem: p.read_text() for p in (out / "report").glob("*.html")}
    return pages, out / "report", out


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs.get("src", ""))
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])


def parsed(html: str) -> Images:
    parser = Images()
    parser.feed(html)
    return parser


def test_pages_for_recipes_with_runs_and_an_index_of_all(report):
    pages, folder, _ = report
    assert set(pages) == {"index", "sphere_demo", "digits_demo", "partial_demo"}  # nothing_demo: no run yet
    index = pages["index"]
    for name in ("sphere_demo", "digits_demo", "partial_demo"):
        assert f'href="{name}.html"' in index
    assert "nothing_demo" in index and "scoregeo reproduce nothing_demo" in index
    assert "href=\"nothing_demo.html\"" not in index


def test_a_page_holds_its_table_figure_and_provenance(report):
    pages, _, out = report
    html = pages["sphere_demo"]
    assert "<h1>sphere_demo: Sphere &lt;b&gt;demo&lt;/b&gt;</h1>" in html  # the recipe's text is escaped
    assert "complete" in html and "2 of 2 run(s) finished" in html
    # the table: a cell with its spread and n, the best value bold
    assert re.search(r'<td class="num best">[0-9.e-]+ ± [0-9.e-]+ \(n=2\)</td>', html), html
    # the figure, embedded
    images = parsed(html).sources
    assert len(images) == 1 and images[0].startswith("data:image/png;base64,")
    assert "The paths of seed 0." in html
    # provenance: the sweep, each run's command, commit, wall time and machine, the config diff
    assert "Sweep: <code>scoregeo run -m experiment=sphere n_pairs=2 eval.geodesic_points=64 seed=0,1</code>" in html
    for seed in (0, 1):
        assert f"scoregeo run experiment=sphere n_pairs=2 eval.geodesic_points=64 seed={seed}" in html
        assert f"sphere/eval.geodesic_points=64,n_pairs=2/seed={seed}" in html
    assert "cores)" in html and "torch thread" in html and re.search(r'<td class="num">\d+\.\d s</td>', html)
    assert "<code>n_pairs</code></td><td><code>8</code></td><td><code>2</code>" in html
    assert "<code>eval.geodesic_points</code>" in html


def test_strips_are_shown_with_their_labels(report):
    pages, _, _ = report
    html = pages["digits_demo"]
    images = parsed(html).sources
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "digits: pair_00 (seed 0)" in html and "One row per method" in html
    assert "<td class=\"num best\">+0.50 [+0.50, +0.50] (n=2)</td>" in html  # a pooled paired cell: interval, n pairs
    assert "no recorded config" in html  # a run folder without .hydra/config.yaml: nothing to compare


def test_an_incomplete_recipe_says_what_is_missing(report):
    pages, _, _ = report
    html = pages["partial_demo"]
    assert "incomplete" in html and "2 of 3 run(s) finished" in html
    assert "What is missing" in html and "scoregeo reproduce partial_demo" in html
    assert "sphere/eval.geodesic_points=64,n_pairs=2/seed=2: not finished (sphere, seed 2)" in html


def test_pages_need_nothing_from_the_network_or_beside_them(report):
    """Self-contained: every image is a data URI, no script, no stylesheet or font to fetch, and
    the only links are between the pages themselves."""
    pages, folder, _ = report
    for name, html in pages.items():
        found = parsed(html)
        assert all(src.startswith("data:") for src in found.sources), name
        assert all(link.endswith(".html") or link.startswith(("data:", "#")) for link in found.links), (name, found.links)
        assert "<script" not in html and "@import" not in html and "url(" not in html, name
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html), name
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.html" for n in pages)


# --------------------------------------------------------------------------- in a browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--disable-default-apps", "--hide-scrollbars", "--window-size=1280,2400"]


def _browser() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or why the browser test cannot run here."""
    lacking = []
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if chromium is None:
        lacking.append("chromium")
    if driver is None:
        lacking.append("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        lacking.append("selenium")
    if lacking:
        return (f"needs headless Chromium: {', '.join(lacking)} not found (Debian: apt-get install chromium "
                "chromium-driver; selenium comes with pip install -c constraints.txt -e '.[test]'); "
                ".ci/run installs them")
    return chromium, driver


def test_report_pages_render_in_headless_chromium(report, tmp_path):
    """Every page in a real browser: each <img> loaded (naturalWidth > 0), no error on the
    console, and a screenshot that is not blank."""
    found = _browser()
    if isinstance(found, str):
        if os.environ.get("SCOREGEO_REQUIRE_BROWSER") == "1":
            pytest.fail(found)
        pytest.skip(found)
    chromium, chromedriver = found
    import io

    import numpy as np
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    _, folder, _ = report
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver, log_output=str(tmp_path / "driver.log")),
                              options=options)
    try:
        for page in sorted(folder.glob("*.html")):
            driver.get(page.as_uri())
            images = driver.execute_script(
                "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
            assert all(complete and width > 0 and height > 0 for _, complete, width, height in images), (page, images)
            expected = len(re.findall(r"<img ", page.read_text()))
            assert len(images) == expected, (page, images)
            errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
            assert not errors, (page, errors)
            shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L"))
            dark = (shot < 200).mean()
            assert shot.std() > 5 and dark > 0.005, (page, shot.std(), dark)  # text and tables drawn, not a blank page
            assert driver.title and driver.title != page.name
    finally:
        driver.quit()
