"""Bad input through the command line: every case ends in exit code 2 and one sentence.

Each case runs ``scoregeo run`` in this process (``scoregeo_cli.cli.main``), or in a
subprocess where the real process matters, and asserts: exit code 2, exactly one line on
stderr that holds the expected words, no "Traceback", no DONE marker (nor summary) left
anywhere under the output root (but the finished run one case plants), and, for a refusal,
nothing written at all: no file or folder that was not there before (no run folder,
``.hydra/``, ``command.sh`` or ``.lock``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import invoke_cli
import yaml
from hydra.core.global_hydra import GlobalHydra

from scoregeo_cli.io import files

REPO = Path(__file__).resolve().parents[1]
PACKAGED_UNET = REPO / "scoregeo_cli" / "checkpoints" / "rotated_digits_unet"
FAST = ["eval.figure=false", "n_pairs=2"]


# ------------------------------------------------------------------ set-ups of some cases

def _truncated_unet(tmp: Path) -> list[str]:
    data = PACKAGED_UNET.with_suffix(".safetensors").read_bytes()
    (tmp / "ck").mkdir()
    (tmp / "ck" / "m.safetensors").write_bytes(data[: len(data) // 3])
    (tmp / "ck" / "m.json").write_bytes(PACKAGED_UNET.with_suffix(".json").read_bytes())
    return ["experiment=rotated_mnist", f"score.checkpoint={tmp}/ck/m.safetensors", "n_pairs=2", "eval.fid=false"]


def _truncated_mlp(tmp: Path) -> list[str]:
    (tmp / "mlp.pt").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    return ["score=mlp", f"score.checkpoint={tmp}/mlp.pt", *FAST]


def _file_as_output_root(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return [f"output_root={tmp}/afile", *FAST]


def _output_root_under_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return [f"output_root={tmp}/afile/sub", *FAST]


def _sweep_into_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["-m", f"output_root={tmp}/afile", "eval.figure=false", "n_pairs=2,3"]


def _empty_image_folder(tmp: Path) -> list[str]:
    (tmp / "pairs").mkdir()
    return ["experiment=sd_morphbench", f"dataset.root={tmp}/pairs", f"score.pretrained={tmp}/nothing"]


def _unpaired_image(tmp: Path) -> list[str]:
    from PIL import Image

    (tmp / "pairs").mkdir()
    Image.new("RGB", (16, 16)).save(tmp / "pairs" / "cat_0.png")
    return ["experiment=sd_morphbench", f"dataset.root={tmp}/pairs", f"score.pretrained={tmp}/nothing"]


def _finished_run_of_other_overrides(tmp: Path) -> list[str]:
    """The folder the request maps to holds a finished run recorded with other overrides."""
    run = tmp / "out" / "sphere" / "eval.figure=false,n_pairs=2" / "seed=0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["n_pairs=2", "eval.figure=false", "metric.lam=5"]))
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"experiment": "sphere"}}}}))
    (run / "summary.json").write_text("{}\n")
    (run / files.DONE).write_text("complete\n")
    return [*FAST]


def _checkpoint_folder(tmp: Path) -> list[str]:
    (tmp / "ckpts").mkdir()
    return ["score=mlp", f"score.checkpoint={tmp}/ckpts", *FAST]


def _unet_checkpoint_folder(tmp: Path) -> list[str]:
    (tmp / "ckpts").mkdir()
    return ["experiment=rotated_mnist", f"score.checkpoint={tmp}/ckpts", "n_pairs=2", "eval.fid=false"]


def _truncated_mnist_gz(tmp: Path) -> list[str]:
    """An interrupted download: the gzipped IDX test images end half-way."""
    import gzip
    import struct

    raw = tmp / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, n in (("t10k", 20), ("train", 40)):
        images = struct.pack(">BBBBIII", 0, 0, 8, 3, n, 28, 28) + bytes(range(256)) * (n * 28 * 28 // 256 + 1)
        labels = struct.pack(">BBBBI", 0, 0, 8, 1, n) + bytes(i % 10 for i in range(n))
        (raw / f"{name}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images[: 16 + n * 28 * 28]))
        (raw / f"{name}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    whole = (raw / "t10k-images-idx3-ubyte.gz").read_bytes()
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(whole[: len(whole) // 2])
    return ["experiment=rotated_mnist", "dataset.source=mnist", f"dataset.root={tmp}/data", "n_pairs=2",
            "eval.fid=false"]


def _locked_run_folder(tmp: Path, monkeypatch) -> list[str]:
    """Another process (here: another open file description) holds the run folder's lock."""
    run = tmp / "out" / "sphere" / "eval.figure=false,n_pairs=2" / "seed=0"
    run.mkdir(parents=True)
    fd = os.open(run / files.LOCK, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _HELD.append(fd)
    return [*FAST]


_HELD: list[int] = []


def _inject_mkdir_error(code: int, text: str):
    def setup(tmp: Path, monkeypatch) -> list[str]:
        real = pathlib.Path.mkdir
        root = tmp / "out"

        def mkdir(self, *args, **kwargs):
            if str(self).startswith(str(root)):
                raise OSError(code, text, str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
        return [*FAST]
    return setup


def _disk_full_at_summary(tmp: Path, monkeypatch) -> list[str]:
    """The disk fills up while summary.json is written (after metrics.jsonl)."""
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".summary.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    return [*FAST]


# --------------------------------------------------------------------------- the table

# (id, overrides or set-up, words the one line holds, how: "in" in this process | "sub")
CASES = [
    # range checks that existed before
    ("lam_negative", ["metric.lam=-1"], "metric.lam must be >= 0", "in"),
    # numbers that are not finite, a method named twice, keys a message must name
    ("lam_inf", ["metric.lam=inf"], "metric.lam must be a finite number, got inf", "in"),
    ("lam_nan", ["metric.lam=nan"], "metric.lam must be a finite number, got nan", "in"),
    ("sigma_minus_inf", ["score.sigma=-inf"], "score.sigma must be a finite number, got -inf", "in"),
    ("angle_range_inf", ["dataset.angle_range=[10,inf]"], "dataset.angle_range must hold finite numbers", "in"),
    ("lam_inf_process", ["metric.lam=inf"], "metric.lam must be a finite number, got inf", "sub"),
    ("method_twice", ["method=[lerp,lerp]"], "method lists lerp more than once; name each method once", "in"),
    ("level_beyond_schedule", ["experiment=rotated_mnist", "score.t=1000", "n_pairs=2", "eval.fid=false"],
     "score.t (the diffusion level) must lie in 1..999, got 1000", "in"),
    ("checkpoint_is_folder", _checkpoint_folder, "ckpts' is a directory, not a checkpoint file", "in"),
    ("unet_checkpoint_is_folder", _unet_checkpoint_folder, "ckpts is a directory", "in"),
    ("mnist_gz_truncated", _truncated_mnist_gz, "t10k-images-idx3-ubyte.gz is truncated or corrupt", "in"),
    ("lam_negative_in_a_sweep", lambda tmp: ["-m", f"output_root={tmp}/out", "metric.lam=10,-1", *FAST],
     "metric.lam must be >= 0, got -1", "in"),
    ("nodes_two", ["solver.nodes=2"], "solver.nodes must be at least 3", "in"),
    ("codimension_zero", ["dataset.intrinsic_dim=3"], "dataset.intrinsic_dim must be below dataset.ambient_dim", "in"),
    ("sigma_zero", ["score.sigma=0"], "score.sigma must be positive", "in"),
    ("max_evals_zero", ["solver.max_evals=0"], "solver.max_evals must be positive", "in"),
    ("normalize_unknown", ["metric.normalize=l2"], "metric.normalize must be one of", "in"),
    ("checkpoint_missing", ["score=mlp", "score.checkpoint=/no/such/file.pt"],
     "score.checkpoint '/no/such/file.pt' does not exist", "in"),
    ("checkpoint_unset", ["score=mlp"], "score.checkpoint is required", "in"),
    ("angle_range_short", ["dataset.angle_range=[10]"], "dataset.angle_range must be a list of two numbers", "in"),
    ("radius_negative", ["dataset.radius=-1"], "dataset.radius must be positive", "in"),
    ("semi_axes_zero", ["experiment=ellipse", "dataset.semi_axes=[0,1]"], "dataset.semi_axes must both be positive", "in"),
    ("ode_method_unknown", ["extrapolate.method=foo"], "extrapolate.method must be a torchdiffeq method", "in"),
    ("no_method", ["method=[]"], "no method selected", "in"),
    ("quadrature_empty", ["experiment=circle", "score.exact=false", "score.n_samples=0"],
     "score.n_samples must be at least 1", "in"),
    ("n_pairs_zero", ["n_pairs=0"], "n_pairs must be at least 1", "in"),
    ("threads_zero", ["threads=0"], "threads must be at least 1 or null, got 0", "in"),
    # wrong types
    ("lam_word", ["metric.lam=abc"], "metric.lam must be a number, got 'abc'", "in"),
    ("n_pairs_word", ["n_pairs=abc"], "n_pairs must be an integer, got 'abc'", "in"),
    ("sigma_word", ["score.sigma=abc"], "score.sigma must be a number, got 'abc'", "in"),
    ("seed_word", ["seed=abc"], "seed must be an integer, got 'abc'", "in"),
    ("unknown_argument", ["+metric.lamda=5"], "metric.lamda: the metric of experiment sphere", "in"),
    ("nodes_fraction", ["solver.nodes=2.5"], "solver.nodes must be an integer, got 2.5", "in"),
    ("angles_words", ["dataset.angle_range=[a,b]"], "dataset.angle_range must be a list of numbers", "in"),
    ("figure_word", ["eval.figure=maybe"], "eval.figure must be true or false, got 'maybe'", "in"),
    ("rerun_word", ["rerun=maybe"], "rerun must be true or false, got 'maybe'", "in"),
    ("threads_word", ["threads=abc"], "threads must be an integer or null, got 'abc'", "in"),
    ("lam_null", ["metric.lam=null"], "metric.lam must be a number, got None", "in"),
    ("sigmas_word", ["experiment=sphere_noise", "eval.sigmas=abc"], "eval.sigmas must be a list, got 'abc'", "in"),
    ("lam_word_process", ["metric.lam=abc"], "metric.lam must be a number, got 'abc'", "sub"),
    # Hydra's composition and override errors
    ("method_unknown", ["method=[nosuch]"],
     "Could not load 'method/nosuch'; Available options in 'method': geodesic, geodesic_conformal", "in"),
    ("experiment_unknown", ["experiment=nosuch"], "Available options in 'experiment': circle, ellipse", "in"),
    ("solver_unknown", ["solver=newtn"], "Could not find 'solver/newtn'", "in"),
    ("key_unknown", ["metric.lamda=5"], "metric.lamda: the metric of experiment sphere "
     "(scoregeo_cli.geometry.stein.SteinMetric) has no option lamda; it takes: lam, normalize", "in"),
    # an unknown key, with or without +: refused naming the nearest key (not Hydra's hint to
    # append it, which ran and ignored it); the sphere's score has no level t
    ("key_misspelt", ["experiment=sphere", "metrc.lam=10"],
     "unknown key metrc.lam: the config of experiment sphere has no such key; the nearest known key is metric.lam",
     "in"),
    ("key_misspelt_added", ["experiment=sphere", "+metrc.lam=10"], "the nearest known key is metric.lam", "in"),
    ("key_misspelt_force_added", ["experiment=sphere", "++metrc.lam=10"], "the nearest known key is metric.lam",
     "in"),
    ("key_misspelt_added_sweep", lambda tmp: ["-m", f"output_root={tmp}/out", "experiment=sphere", "+metrc.lam=10",
                                              "seed=0,1"],
     "the nearest known key is metric.lam", "in"),
    ("eval_key_added", ["experiment=sphere", "+eval.fgure=false"], "the nearest known key is eval.figure", "in"),
    ("sphere_score_has_no_t", ["experiment=sphere", "score.t=-3"],
     "score.t: the score of experiment sphere (scoregeo_cli.scores.analytic.analytic_score) has no option t; "
     "it takes: sigma", "in"),
    ("sphere_score_has_no_t_added", ["experiment=sphere", "+score.t=-3"],
     "score.t: the score of experiment sphere", "in"),
    ("override_syntax", ["metric.lam=["], "no viable alternative at input '['", "in"),
    ("experiment_unknown_process", ["experiment=nosuch"], "Could not find 'experiment/nosuch'", "sub"),
    # constructor errors that Hydra used to wrap
    ("image_folder_empty", _empty_image_folder, "holds no image pairs", "in"),
    ("image_unpaired", _unpaired_image, "has no partner cat_1.png beside it", "in"),
    # resources
    ("pairs_beyond_memory", ["n_pairs=100000000"], "n_pairs=100000000 needs about", "in"),
    # files
    ("unet_truncated", _truncated_unet, "m.safetensors: Error while deserializing header", "in"),
    ("mlp_truncated", _truncated_mlp, "is not a scoregeo MLP checkpoint", "in"),
    ("output_root_is_file", _file_as_output_root, "afile is a file, not a folder", "in"),
    ("output_root_under_file", _output_root_under_file, "afile is a file, not a folder", "in"),
    ("sweep_into_file", _sweep_into_file, "afile is a file, not a folder", "in"),
    ("output_root_is_file_process", _file_as_output_root, "afile is a file, not a folder", "sub"),
    ("output_root_read_only", _inject_mkdir_error(errno.EROFS, "Read-only file system"), "Read-only file system", "in"),
    ("output_root_unwritable", _inject_mkdir_error(errno.EACCES, "Permission denied"), "Permission denied", "in"),
    ("disk_full", _disk_full_at_summary, "summary.json: No space left on device", "in"),
    # run folders
    ("finished_with_other_overrides", _finished_run_of_other_overrides,
     "holds a finished run of overrides [n_pairs=2 eval.figure=false metric.lam=5]", "in"),
    ("run_folder_locked", _locked_run_folder, "is in use by another scoregeo process (pid 4242)", "in"),
]


def _argv(setup, tmp: Path, monkeypatch) -> list[str]:
    if callable(setup):
        takes_monkeypatch = setup.__code__.co_argcount == 2
        args = setup(tmp, monkeypatch) if takes_monkeypatch else setup(tmp)
    else:
        args = list(setup)
    if not any(a.startswith("output_root=") for a in args):
        args = [f"output_root={tmp}/out", *args]
    if not any(a.startswith(("eval.figure=", "experiment=")) for a in args):
        args.append("eval.figure=false")
    return args


def run_in_process(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    code, _, err = invoke_cli(argv, monkeypatch, capsys)
    return code, err


def run_process(argv: list[str], cwd: Path) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "scoregeo_cli.cli", *argv], cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    return out.returncode, out.stderr


@pytest.mark.parametrize("setup, words, how", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_sentence(setup, words, how, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCOREGEO_PROGRESS_INTERVAL", "600")  # stderr: the sentence alone (progress: test_progress)
    argv = ["run", *_argv(setup, tmp_path, monkeypatch)]
    planted = {p for p in tmp_path.rglob(files.DONE)}
    before = set(tmp_path.rglob("*"))
    try:
        if how == "in":
            code, err = run_in_process(argv, monkeypatch, capsys)
        else:
            code, err = run_process(argv, tmp_path)
    finally:
        while _HELD:
            os.close(_HELD.pop())
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("scoregeo: error: ") and words in lines[0], err
    assert "Traceback" not in err
    # no DONE marker but one a set-up planted (a finished run that must stay as it was)
    assert {p for p in tmp_path.rglob(files.DONE)} == planted
    # nothing looks complete: no summary other than the one a set-up planted
    assert all(p.read_text() == "{}\n" for p in tmp_path.rglob("summary.json"))
    # a refusal writes nothing at all (a full disk is a failure while writing: its results go)
    made = set(tmp_path.rglob("*")) - before
    if words.endswith("No space left on device"):
        assert not [p for p in made if p.name in (files.DONE, "summary.json", "metrics.jsonl", files.LOCK)]
    else:
        assert not made, sorted(map(str, made))


def test_table_has_at_least_thirty_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


GOOD = ([[f"experiment={e}"] for e in _options("experiment")]
        + [["experiment=sphere", f"{g}={o}"] for g in ("solver", "metric", "score") for o in _options(g)]
        + [["experiment=rotated_mnist", f"method=[{','.join(_options('method'))}]"],
           ["experiment=rotated_mnist", "score=unet"], ["experiment=sphere", "threads=null", "n_pairs=3"]])


def test_shipped_configs_pass_the_type_checks():
    """No false refusals: every experiment and every option of the checked groups."""
    from hydra import compose, initialize_config_dir

    from scoregeo_cli.app import CONF_DIR
    from scoregeo_cli.jobs import check_types

    for overrides in GOOD:
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose("config", overrides=overrides)
        check_types(cfg)
    GlobalHydra.instance().clear()


def test_train_refusal_writes_nothing(tmp_path, monkeypatch, capsys):
    """`scoregeo train` of a score with nothing to train: one sentence, exit 2, and not even
    the folders of its run (``train/<experiment>/<score>/seed-<k>``) stay behind."""
    code, err = run_in_process(["train", "experiment=sphere", f"output_root={tmp_path}/out"], monkeypatch, capsys)
    assert code == 2 and err.strip().splitlines() == [
        "scoregeo: error: score 'analytic' has nothing to train; choose a trainable backbone, e.g. score=mlp"]
    assert not (tmp_path / "out").exists()
