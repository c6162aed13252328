"""The ``scoregeo`` command: a thin dispatcher over subcommands.

Each subcommand is a function ``(argv: list[str], prog: str) -> int`` named in
``SUBCOMMANDS`` as "module:function"; its module is imported only when the subcommand runs,
so ``scoregeo --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

# name -> ("module:function", one-line help); the function takes (argv, prog) -> exit code
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("scoregeo_cli.app:main", "run an experiment (Hydra overrides follow; -m for a sweep)"),
    "train": ("scoregeo_cli.app:train_main", "train a score backbone for an experiment"),
    "bench": ("scoregeo_cli.studies.bench:main", "solver benchmark: score evaluations, time, error"),
    "reproduce": ("scoregeo_cli.reproduce:reproduce_main",
                  "run the sweeps behind a paper table, then render it"),
    "tables": ("scoregeo_cli.reproduce:tables_main", "render every table and figure from outputs/"),
    "report": ("scoregeo_cli.reproduce:report_main",
               "one HTML page per recipe (table, figures, strips, provenance) and an index"),
    "weights": ("scoregeo_cli.io.weights:main", "provision offline LPIPS/Inception weights and MNIST digits"),
    "fidelity": ("scoregeo_cli.studies.fidelity:main",
                 "score models against the exact orbit score: relative error and round-trip PSNR per t"),
    "lpips": ("scoregeo_cli.evaluation.commands:lpips_main",
              "LPIPS distance between two image files, or between the same-named images of two folders"),
    "fid": ("scoregeo_cli.evaluation.commands:fid_main", "FID (and KID) between two folders of images"),
}

USAGE = """usage: scoregeo <command> [args]

commands:
{commands}

`scoregeo <command> --help` describes one command. Examples:
  scoregeo run experiment=sphere
  scoregeo run -m experiment=sphere metric.lam=10,1000 seed=0,1
  scoregeo reproduce table_synthetic
"""


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def _forget_caught_interrupt() -> None:
    """Make a caught Ctrl-C end in exit code 130 under ``python -m`` too.

    CPython (3.11, 3.12) marks a KeyboardInterrupt that ends any string ``exec``/``eval`` as
    unhandled, even when a caller catches it: Ctrl-C landing while a dataclass or namedtuple is
    being built is enough. Under ``python -m`` the interpreter then kills itself with SIGINT at
    exit (status -2) instead of returning our 130. The mark is cleared at the start of every
    string evaluation, so one empty evaluation clears it.
    """
    exec("None")  # noqa: S102 - a constant string; see the docstring


# the exit code of a command stopped by a closed stdout: 128 + SIGPIPE, what a shell reports
# for a program that a closed pipe stops (`yes | head -1`)
CLOSED_STDOUT = 141


def _stdout_closed() -> int:
    """Stdout was closed by its reader (``scoregeo run | head -1``): stop quietly, as
    command-line tools do, with no error line and exit code 141. Further writes to stdout
    (the interpreter's own flush at exit included) go to /dev/null."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (captured output): nothing to redirect
        pass
    return CLOSED_STDOUT


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a reader that closed the pipe surfaces here at the latest
    except BrokenPipeError:
        return _stdout_closed()
    return code


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from scoregeo_cli import __version__

        print(f"scoregeo {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"scoregeo: unknown command '{name}'; choose one of: {', '.join(SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    from scoregeo_cli.errors import ScoregeoError
    from scoregeo_cli.io import progress

    try:
        with progress.activity(f"scoregeo {name}"):  # a log hears from a long command from its start
            module_name, function_name = SUBCOMMANDS[name][0].split(":")
            command = getattr(importlib.import_module(module_name), function_name)
            code = int(command(rest, prog=f"scoregeo {name}") or 0)
        if code == 130:  # `run` and `train` caught Ctrl-C and printed their line
            _forget_caught_interrupt()
        return code
    except ScoregeoError as err:
        print(f"scoregeo {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # `run` and `train` print their own line (scoregeo_cli.app)
        from scoregeo_cli.io import progress

        during = progress.current()
        progress.close_all()
        print(f"scoregeo {name}: interrupted{f' during {during}' if during else ''}; "
              "run the same command again to start over (finished runs are kept and skipped)",
              file=sys.stderr, flush=True)
        _forget_caught_interrupt()
        return 130


if __name__ == "__main__":
    sys.exit(main())
