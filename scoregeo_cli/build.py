"""Build the pluggable objects of a run from its config (all through ``instantiate``).

Every config node with a ``_target_`` is checked against its target's signature before
anything is built (``check_config``, ``check_node``): a key the constructor does not take
and a value whose type does not match its annotation (int, float, bool, str, list, None)
are refused in one sentence naming the key, the value and what it accepts. Range checks
stay with the constructors.
"""

from __future__ import annotations

import inspect
import os
import re

from hydra.errors import InstantiationException
from hydra.utils import get_object
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from scoregeo_cli.errors import ScoregeoError
from scoregeo_cli.geometry.base import Metric
from scoregeo_cli.scores.base import ScoreField

# keys of a config node that are not constructor arguments (``score.train``: `scoregeo train`)
NOT_ARGUMENTS = ("train",)
# type words of annotations -> the Python types they accept and how a sentence names them
KINDS = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "str": ((str,), "a string"),
    "Path": ((str,), "a path"),
    "PathLike": ((str,), "a path"),
    "list": ((list, tuple), "a list"),
    "tuple": ((list, tuple), "a list"),
    "Sequence": ((list, tuple), "a list"),
    "None": ((type(None),), "null"),
    "dict": ((dict,), "a mapping"),
}


def kinds_of(annotation) -> list[str] | None:
    """The type words of an annotation (``"float | None"`` -> ["float", "None"]); None when
    any part is not one of KINDS (then any value passes)."""
    if annotation is inspect.Parameter.empty:
        return None
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace("typing.", "")
    optional = re.fullmatch(r"Optional\[(.*)\]", text)
    if optional:
        text = f"{optional.group(1)} | None"
    words = []
    for part in _split_union(text):
        word = re.match(r"[\w.]*", part.strip()).group(0).rsplit(".", 1)[-1]
        if word not in KINDS:
            return None
        words.append(word)
    return words


def _split_union(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def accepts(value, words: list[str]) -> bool:
    for word in words:
        types = KINDS[word][0]
        if isinstance(value, bool) and word not in ("bool",):
            continue
        if isinstance(value, types):
            return True
    return False


def describe(words: list[str]) -> str:
    names = list(dict.fromkeys(KINDS[w][1] for w in words))
    return " or ".join(names)


def check_value(key: str, value, words: list[str]) -> None:
    """Refuse ``value`` of config key ``key`` unless it is one of the type words."""
    if not accepts(value, words):
        shown = f"'{value}'" if isinstance(value, str) else value
        raise ScoregeoError(f"{key} must be {describe(words)}, got {shown}")


def _target_parameters(target: str, key: str):
    if target in _PARAMETERS:
        return _PARAMETERS[target]
    try:
        obj = get_object(target)
    except Exception as err:  # noqa: BLE001  (a target that does not import)
        raise ScoregeoError(f"{key}._target_ '{target}' cannot be imported: {str(err).splitlines()[0]}") from None
    try:
        _PARAMETERS[target] = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        _PARAMETERS[target] = None
    return _PARAMETERS[target]


_PARAMETERS: dict = {}  # target -> its signature's parameters (None: no signature); a sweep's jobs share it


def options(node, key: str) -> list[str] | None:
    """What a config node with a ``_target_`` may set: its target's parameters that have
    defaults or are set in the node (the others, e.g. a metric's score, are supplied by the
    code that completes a partial); None when the target has no signature or takes any
    keyword (``**kwargs``)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    params = _target_parameters(str(node["_target_"]), key)
    if params is None or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    return [n for n, p in params.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) and n != "self"
            and (n in node or p.default is not p.empty)]


def check_node(node, key: str) -> None:
    """Check one config node with a ``_target_`` (and the nodes inside it) against the
    signature of its target: unknown keys and mistyped values end in one sentence."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    params = _target_parameters(str(node["_target_"]), key)
    if params is None:
        return
    named = {n: p for n, p in params.items()
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) and n != "self"}
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params.values())
    for name, value in node.items():
        full = f"{key}.{name}" if key else name
        if name.startswith("_") and name.endswith("_"):
            continue
        if name in NOT_ARGUMENTS:
            if isinstance(value, dict) and "_target_" in value:
                check_node(value, full)
            continue
        if name not in named:
            if open_ended:
                continue
            raise ScoregeoError(f"{full} is not an option of {key} ({node['_target_']}); "
                                f"it takes: {', '.join(options(node, key) or []) or 'nothing'}")
        if isinstance(value, dict) and "_target_" in value:
            check_node(value, full)
            continue
        if value == "???" or (value is None and named[name].default is named[name].empty):
            continue  # unset: a required value the constructor reports in its own sentence
        words = kinds_of(named[name].annotation)
        if words is None:
            continue
        if named[name].default is None and "None" not in words:
            words = [*words, "None"]
        check_value(full, value, words)
        inner = re.fullmatch(r"(?:list|tuple|Sequence)\[(\w+)(?:, *\1)*\](?: *\| *None)?",
                             str(named[name].annotation).strip())
        if isinstance(value, (list, tuple)) and inner and inner.group(1) in PLURAL \
                and not all(accepts(item, [inner.group(1)]) for item in value):
            raise ScoregeoError(f"{full} must be a list of {PLURAL[inner.group(1)]}, got {value}")


PLURAL = {"int": "integers", "float": "numbers", "str": "strings", "bool": "true/false values"}


def check_finite(cfg: DictConfig) -> None:
    """Refuse NaN and infinite numbers anywhere in the run's config (``hydra`` aside): no
    value of scoregeo means anything at infinity, and a NaN would run to the end and be
    blamed on the score. One sentence naming the key."""
    import math

    def walk(value, key: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ScoregeoError(f"{key} must be a finite number, got {value}")
        if isinstance(value, dict):
            for name, item in value.items():
                if key or name != "hydra":
                    walk(item, f"{key}.{name}" if key else str(name))
        elif isinstance(value, (list, tuple)):
            bad = [v for v in value if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                raise ScoregeoError(f"{key} must hold finite numbers, got {list(value)}")
            for i, item in enumerate(value):
                walk(item, f"{key}[{i}]")

    walk(OmegaConf.to_container(cfg, resolve=False), "")


def check_unique_methods(overrides) -> None:
    """Refuse a method named twice in ``method=[...]`` (Hydra would run it once, silently)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides([str(o) for o in overrides]):
        if override.key_or_group.lstrip("+~") != "method" or override.is_sweep_override():
            continue
        value = override.value()
        names = [str(v) for v in value] if isinstance(value, list) else []
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ScoregeoError(f"method lists {', '.join(twice)} more than once; name each method once, "
                                f"e.g. method=[{','.join(dict.fromkeys(names))}]")


def check_config(cfg: DictConfig, key: str = "") -> None:
    """Check every node with a ``_target_`` in ``cfg`` (``check_node``)."""
    for name in cfg:
        if name == "hydra":
            continue
        node = cfg._get_node(name)
        if not isinstance(node, DictConfig) or node._is_missing() or node._is_none():
            continue
        full = f"{key}.{name}" if key else str(name)
        if "_target_" in node:
            check_node(node, full)
        else:
            check_config(node, full)


def _key_of(node) -> str:
    if isinstance(node, DictConfig):
        try:
            return node._get_full_key(None) or ""
        except Exception:  # noqa: BLE001
            return ""
    return ""


def instantiate(node, *args, key: str | None = None, **kwargs):
    """hydra.utils.instantiate after ``check_node``; a constructor's error comes out as one
    ScoregeoError sentence, never wrapped in Hydra's "Error in call to target"."""
    key = _key_of(node) if key is None else key
    if isinstance(node, (dict, DictConfig)) and "_target_" in node:
        check_node(node, key)
    try:
        return hydra_instantiate(node, *args, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ScoregeoError):
            raise cause from None
        if isinstance(cause, OSError):
            from scoregeo_cli.io.files import os_error_sentence

            raise ScoregeoError(os_error_sentence(cause, "read")) from None
        if cause is None:
            raise ScoregeoError(str(err).splitlines()[0]) from None
        target = node.get("_target_") if isinstance(node, (dict, DictConfig)) else None
        raise ScoregeoError(f"{key or target} could not be built ({target}): "
                            f"{type(cause).__name__}: {_first_line(cause)}") from None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def require_set(cfg: DictConfig, group: str) -> None:
    """Refuse a config group with required values (``???``) left unset."""
    missing = sorted(OmegaConf.missing_keys(cfg[group]))
    if missing:
        key = f"{group}.{missing[0]}"
        raise ScoregeoError(f"{key} is required but not set; pass it as an override, e.g. {key}=...")


def build_score(cfg: DictConfig, **context) -> ScoreField:
    """Instantiate ``cfg.score`` (a partial) and complete it with ``context``.

    The ``train`` section of a score config holds training hyperparameters for
    ``scoregeo train`` and is not passed to the constructor.
    """
    require_set(cfg, "score")
    node = OmegaConf.to_container(cfg.score, resolve=True)
    node.pop("train", None)
    try:
        score = instantiate(node, key="score")
        try:
            return score(**context)
        except OSError as err:
            from scoregeo_cli.io.files import os_error_sentence

            raise ScoregeoError(os_error_sentence(err, "read")) from None
    except ScoregeoError as err:
        raise ScoregeoError(_name_score_key(str(err), node)) from None


# phrases score constructors use for a value without naming its key -> the key
SCORE_PHRASES = {"the diffusion level t": "t"}


def _name_score_key(message: str, node: dict) -> str:
    """A score constructor's sentence with the config key named: ``score.t`` for "the
    diffusion level t", and for a ``score.checkpoint`` that is a directory, that it is one
    (instead of "does not exist")."""
    for phrase, key in SCORE_PHRASES.items():
        if message.startswith(phrase) and key in node:
            message = f"score.{key} (the diffusion level){message[len(phrase):]}"
    checkpoint = node.get("checkpoint")
    if isinstance(checkpoint, str) and checkpoint and os.path.isdir(os.path.expanduser(checkpoint)) \
            and "does not exist" in message:
        message = message.replace("does not exist", "is a directory, not a checkpoint file", 1)
    return message


def build_metric(cfg: DictConfig, score: ScoreField) -> Metric:
    return instantiate(cfg.metric)(score=score)


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000


def check_memory(cfg: DictConfig, nodes: int, dim: int, methods) -> None:
    """Refuse, before any pair is drawn, a run whose largest tensors would not fit in memory.

    The estimate: paths of ``nodes`` points (plus extrapolated ones) of dimension ``dim`` in
    float64 for every method, the scores at them and the solver's work (two more copies),
    for the pairs held at once (``task.pair_batch`` or all ``n_pairs``), plus the endpoints
    and their noise for all pairs.
    """
    if cfg.get("n_pairs") is None:
        return
    pairs = int(cfg.n_pairs)
    batch = min(pairs, int(cfg.task.get("pair_batch") or pairs))
    steps = int(cfg.extrapolate.get("steps", 0) or 0) if "extrapolate" in cfg else 0
    copies = len(methods) + 2
    per_pair = (int(nodes) + steps) * int(dim) * 8 * copies
    need = batch * per_pair + pairs * int(dim) * 8 * 3
    have = available_memory()
    if need > have:
        fit = max(0, have // (per_pair + int(dim) * 8 * 3))
        raise ScoregeoError(
            f"n_pairs={pairs} needs about {_size(need)} of memory ({batch} pairs x {int(nodes) + steps} points x "
            f"{int(dim)} dimensions x 8 bytes x {copies} copies for {len(methods)} method(s)), more than the "
            f"{_size(have)} available; lower n_pairs (to at most about {fit}) or solver.nodes, or select fewer methods")
