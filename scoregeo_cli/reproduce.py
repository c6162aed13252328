"""`scoregeo reproduce`, `scoregeo tables` and `scoregeo report`: the paper's tables and
figures from run folders.

``reproduce NAME`` runs the sweeps of ``experiments/NAME.yaml`` (finished runs are skipped;
each sweep is a ``scoregeo run -m`` subprocess) and renders it; ``tables`` renders every
recipe from what is already in the output root; ``report`` writes an HTML page per recipe.
Rendering is ``reporting.tables.render`` and ``reporting.report.write_report``; how cells
aggregate is described in ``reporting.aggregate``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.io import progress
from scoregeo_cli.io.files import atomic_write_text, is_done
from scoregeo_cli.reporting import recipes as rc
from scoregeo_cli.reporting import run_folders as rf
from scoregeo_cli.reporting import tables
from scoregeo_cli.reporting.aggregate import MissingRuns, recipe_runs
from scoregeo_cli.reporting.publish import RESULTS_DIR
from scoregeo_cli.reporting.tables import render


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ScoregeoError(f"--seeds takes integers separated by commas, e.g. 0,1,2; got '{text}'") from None
    if not seeds:
        raise ScoregeoError("--seeds needs at least one seed")
    return seeds


def _check_extras(recipe: rc.Recipe, extras: list[str]) -> None:
    for o in rf.parse(extras):
        if o.is_sweep_override():
            raise ScoregeoError(f"extra override '{o.input_line}' is a sweep; pass single values "
                                "(a sweep belongs in a recipe)")
        if o.key_or_group in rc.RESERVED_KEYS:
            raise ScoregeoError(f"the recipe sets {o.key_or_group} itself; "
                                + ("use --seeds" if o.key_or_group == "seed" else "write another recipe"))
    given = rf.values(extras)
    lacking = [k for k in recipe.requires if k not in given]
    if lacking:
        raise ScoregeoError(f"{recipe.name} needs " + " and ".join(f"{k}=..." for k in lacking)
                            + f"; pass them as overrides: scoregeo reproduce {recipe.name} "
                            + " ".join(f"{k}=<path>" for k in lacking))


def _output_root(extras: list[str]) -> Path:
    return Path(rf.values(extras).get("output_root", "outputs")) if extras else Path("outputs")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partial", action="store_true",
                        help="render what is finished and list the missing runs in the footer")
    parser.add_argument("--recipes", type=Path, default=rc.RECIPES_DIR, metavar="DIR",
                        help="folder of recipe files (default: the repository's experiments/)")


def reproduce_main(argv: list[str], prog: str = "scoregeo reproduce") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run the sweeps behind one paper table or figure (finished runs are "
        "skipped), then render it into <output_root>/tables and <output_root>/figures.",
        epilog="Overrides after NAME go to every run, e.g. output_root=/scratch/out or "
        "score.pretrained=/models/sd21 (recipes that need user files say so).")
    parser.add_argument("name", nargs="?", help="recipe name (file name in experiments/ without .yaml)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides passed to every run")
    parser.add_argument("--dry-run", action="store_true", help="print the scoregeo run -m commands and stop")
    parser.add_argument("--seeds", help="comma-separated seeds instead of the recipe's (e.g. 0)")
    parser.add_argument("--list", action="store_true", help="list the recipes and stop")
    _common(parser)
    args = parser.parse_intermixed_args(argv)
    if args.list:
        for path in rc.available(args.recipes):
            recipe = rc.load(path)
            print(f"{recipe.name:<22} {recipe.title}")
        return 0
    if not args.name:
        parser.error("a recipe NAME is required (--list shows them)")
    recipe = rc.load(rc.find(args.name, args.recipes))
    extras, seeds = list(args.overrides), _seeds(args.seeds) or recipe.seeds
    _check_extras(recipe, extras)
    commands = recipe.commands(extras, seeds)
    if args.dry_run:
        for cmd in commands:
            print(shlex.join(["scoregeo", "run", "-m", *cmd]))
        return 0

    root = _output_root(extras)
    locator = rf.RunLocator(root, extras, recipe.requires)
    rerun = rf.values(extras).get("rerun", "false").lower() == "true"
    start = time.perf_counter()
    per_sweep = [[sweep_folder(locator, job) for job in rf.expand(cmd)] for cmd in commands]
    everything = [f for folders in per_sweep for f in folders]
    started = {f: results_mtime_or_none(f) for f in everything}  # with rerun=true, DONE must be new

    def finished() -> int:
        return sum(is_done(f) and (not rerun or results_mtime_or_none(f) != started[f]) for f in everything)

    # the sweeps print their own output: their progress goes to the same terminal, so lines
    with progress.bar(len(everything), f"{recipe.name}: runs finished", "run", lines=True, poll=finished) as bar:
        bar.update(finished())
        for i, (cmd, folders) in enumerate(zip(commands, per_sweep), 1):
            shown = shlex.join(["scoregeo", "run", "-m", *cmd])
            if not rerun and all(is_done(f) for f in folders):
                print(f"[{recipe.name} {i}/{len(commands)}] all {len(folders)} runs finished: {shown}", flush=True)
                continue
            print(f"[{recipe.name} {i}/{len(commands)}] {finished()}/{len(everything)} runs finished; {shown}",
                  flush=True)
            code = subprocess.call([sys.executable, "-m", "scoregeo_cli.cli", "run", "-m", *cmd])
            if code != 0:
                raise ScoregeoError(f"sweep {i} of {recipe.name} failed with exit code {code}: {shown}")
            bar.n = finished()
    elapsed = time.perf_counter() - start
    try:
        written = render(recipe, root, extras, seeds, partial=args.partial)
    except MissingRuns as err:
        raise ScoregeoError(err.describe(recipe)) from None
    _print_written(written)
    print(f"{recipe.name}: sweeps took {elapsed:.0f} s")
    return 0


def results_mtime_or_none(run_dir: Path) -> float | None:
    try:
        return rf.results_mtime(run_dir)
    except OSError:
        return None


def sweep_folder(locator: rf.RunLocator, job: list[str]) -> Path:
    """The run folder Hydra gives one job of a sweep."""
    given = rf.values(job)
    return locator.rule.folder(locator.root, rf.experiment_name(given["experiment"]), job, int(given["seed"]))


def _print_written(written: list[Path]) -> None:
    for path in written:
        if path.suffix == ".md" and path.parent.name == "tables":
            print(path.read_text())
    for path in written:
        print(f"wrote {path}")


def tables_main(argv: list[str], prog: str = "scoregeo tables") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Render every recipe in experiments/ (or the named ones) from the "
        "finished runs under the output root into <output_root>/tables/NAME.{md,tex,csv} and "
        "<output_root>/figures/. A recipe with unfinished runs is listed in one line (how many "
        "runs it lacks and the command that makes them) and the exit code stays 0 (--strict: 1). "
        "--publish writes every complete recipe (table, figures, provenance, report page) into "
        "docs/results/ instead; --readme fills the README's results regions from there.")
    parser.add_argument("names", nargs="*", help="recipes to render (default: all)")
    parser.add_argument("--output-root", type=Path, default=Path("outputs"),
                        help="where the runs are (default: outputs)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with code 1 when a recipe is incomplete (default: 0, listing it)")
    parser.add_argument("--publish", nargs="?", const=RESULTS_DIR, default=None, type=Path, metavar="DIR",
                        help="publish every complete recipe instead (table as NAME.md and NAME.csv, figures, "
                             "provenance NAME.json, report pages) into DIR (default: docs/results)")
    parser.add_argument("--readme", nargs="?", const=Path("README.md"), default=None, type=Path, metavar="FILE",
                        help="rewrite the results regions of FILE (default: README.md), <!-- results:NAME --> ... "
                             "<!-- /results -->, from the published results (after --publish, if given)")
    parser.add_argument("--results", type=Path, default=None, metavar="DIR",
                        help="the published results --readme reads (default: the --publish DIR, else docs/results)")
    parser.add_argument("--check", action="store_true",
                        help="with --readme: write nothing, list the regions that differ from the published "
                             "results and exit with code 1 if any does")
    _common(parser)
    args = parser.parse_args(argv)
    if args.check and args.readme is None:
        parser.error("--check goes with --readme")
    paths = [rc.find(n, args.recipes) for n in args.names] if args.names else rc.available(args.recipes)
    if not paths:
        raise ScoregeoError(f"no recipes in {args.recipes}")
    code = 0
    if args.publish is not None:
        code = _publish(args, paths, prog)
    if args.readme is not None:
        return max(code, _readme(args, prog))
    if args.publish is not None:
        return code
    done, incomplete, failed = [], [], []
    commit = tables.git_commit()
    for path in paths:
        recipe = rc.load(path)
        try:
            written = render(recipe, args.output_root, partial=args.partial, commit=commit)
        except MissingRuns as err:
            incomplete.append(recipe.name)
            print(err.describe(recipe, recipe_runs(recipe, recipe.seeds)), flush=True)
            continue
        except ScoregeoError as err:  # e.g. a finished run's summary.json is corrupt
            failed.append(recipe.name)
            print(f"{prog}: error: {recipe.name}: {err}", file=sys.stderr, flush=True)
            continue
        done.append(recipe.name)
        for p in written:
            print(f"wrote {p}", flush=True)
    print(f"rendered: {', '.join(done) or 'none'}; incomplete: {', '.join(incomplete) or 'none'}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed or (incomplete and args.strict) else 0


def report_main(argv: list[str], prog: str = "scoregeo report") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Write one static, self-contained HTML page per recipe (its table with "
        "intervals and n, its figures, a few image strips per configuration, the provenance of every run, "
        "and what is missing when runs are not finished) and an index, from the finished runs under the "
        "output root. Images are embedded; a page needs no network. Without NAMEs, pages are written for "
        "the recipes with at least one finished run and the index lists them all.")
    parser.add_argument("names", nargs="*", metavar="RECIPE", help="recipes to report (default: all)")
    parser.add_argument("--output-root", type=Path, default=Path("outputs"),
                        help="where the runs are (default: outputs)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where the pages go (default: <output-root>/report)")
    parser.add_argument("--strips", type=int, default=2, metavar="N",
                        help="image strips shown per configuration, from its first finished seed (default: 2)")
    parser.add_argument("--strip-groups", type=int, default=8, metavar="N",
                        help="configurations whose strips are shown, in the recipe's order (default: 8)")
    parser.add_argument("--recipes", type=Path, default=rc.RECIPES_DIR, metavar="DIR",
                        help="folder of recipe files (default: the repository's experiments/)")
    args = parser.parse_args(argv)
    if args.strips < 0 or args.strip_groups < 0:
        raise ScoregeoError("--strips and --strip-groups must be at least 0")
    from scoregeo_cli.reporting.report import write_report

    paths = [rc.find(n, args.recipes) for n in args.names] if args.names else rc.available(args.recipes)
    if not paths:
        raise ScoregeoError(f"no recipes in {args.recipes}")
    out = args.out if args.out is not None else args.output_root / "report"
    written = write_report([rc.load(p) for p in paths], args.output_root, out, tables.git_commit(),
                           strips=args.strips, strip_groups=args.strip_groups, only_with_runs=not args.names)
    for path in written:
        print(f"wrote {path}")
    return 0


def _publish(args, paths: list[Path], prog: str) -> int:
    from scoregeo_cli.reporting.publish import publish

    done = publish([rc.load(p) for p in paths], args.output_root, args.publish, tables.git_commit())
    for name, line in done.incomplete:
        print(f"{line} (not published)", flush=True)
    for name, err in done.failed:
        print(f"{prog}: error: {name}: {err}", file=sys.stderr, flush=True)
    for path in done.written:
        print(f"wrote {path}", flush=True)
    print(f"published to {args.publish}: {', '.join(done.names) or 'none'}; incomplete: "
          f"{', '.join(n for n, _ in done.incomplete) or 'none'}"
          + (f"; failed: {', '.join(n for n, _ in done.failed)}" if done.failed else ""))
    return 1 if done.failed or (done.incomplete and args.strict) else 0


def _readme(args, prog: str) -> int:
    from scoregeo_cli.reporting.publish import fill_readme, readme_differences, regions

    results = args.results or args.publish or RESULTS_DIR
    try:
        text = args.readme.read_text()
    except OSError as err:
        raise ScoregeoError(f"cannot read {args.readme}: {err.strerror}") from None
    names = regions(text)
    link = Path(os.path.relpath(Path(results).absolute(), args.readme.absolute().parent)).as_posix()
    if args.check:
        differences = readme_differences(text, results, link)
        for line in differences:
            print(line)
        print(f"{args.readme}: {len(names)} results region(s), {len(differences)} differ from {results}")
        return 1 if differences else 0
    if not names:
        print(f"{args.readme} has no results region (<!-- results:NAME --> ... <!-- /results -->); nothing to fill")
        return 0
    filled = fill_readme(text, results, link)
    if filled != text:
        atomic_write_text(args.readme, filled)
    print(f"{'wrote' if filled != text else 'unchanged:'} {args.readme}: {', '.join(names)} from {results}")
    return 0
