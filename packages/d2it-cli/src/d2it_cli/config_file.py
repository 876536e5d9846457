"""`--config FILE` for the `d2it train` commands: options from a YAML or JSON file, and replaying a run.

The file maps option names to values (`grad_accum: 2` or `grad-accum: 2`; a flag takes true/false, a
repeatable option a list). Its values become the command's defaults through click's `default_map`,
so the precedence is: the command line, then the file, then the built-in defaults. A run's
`RUN_DIR/train.json` records the options it was started with under `options`; given as `--config`,
it replays them (a replay is a new run: the run directory and `--resume` are not recorded).
"""

import difflib
import json
import os
from pathlib import Path

import click

from d2it.errors import ConfigError

# options that say where and how this start of a run writes, not what the run is: never recorded for a replay
NOT_REPLAYED = ("resume", "run_dir", "overwrite", "save_to_system")
_SKIPPED = ("config", "help")


def read_config_file(path) -> dict:
    """The mapping in a YAML (.yaml/.yml, or anything else) or JSON (.json) file; one sentence when it is not one."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    else:
        import yaml  # only a command given --config pays for it

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"config file {path} is not valid YAML ({problem}{where})") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values, not a {_kind(doc)}")
    return doc


def _kind(value) -> str:
    kinds = {list: "list", dict: "mapping", str: "string", int: "number", float: "number", bool: "boolean"}
    return kinds.get(type(value), type(value).__name__)


def _options_of(path: Path, doc: dict, command: str) -> dict:
    """The options in a config file; from a run's train.json, the options its run was started with."""
    if "task" not in doc or not isinstance(doc.get("task"), str):
        return doc
    options = doc.get("options")
    if not isinstance(options, dict):
        raise ConfigError(
            f"{path} is the record of a run that an older d2it started; it lists no command options and cannot be "
            "replayed"
        )
    if doc["task"] != command:
        raise ConfigError(f"{path} records a `d2it train {doc['task']}` run; replay it with d2it train {doc['task']}")
    return options


def _params_by_key(command: click.Command) -> dict[str, click.Parameter]:
    """Every option of `command` under its name and each of its long flags (`system`, `system_dir`, `kl_weight`)."""
    found = {}
    for param in command.params:
        if param.name in _SKIPPED or not isinstance(param, click.Option):
            continue
        found[param.name] = param
        for flag in (*param.opts, *param.secondary_opts):
            if flag.startswith("--") and not flag.startswith("--no-"):
                found.setdefault(flag[2:].replace("-", "_"), param)
    return found


def _check_value(ctx, param: click.Parameter, key: str, value, path: Path):
    """`value` converted by the option's own type; a bad one is one sentence naming the file and the key."""
    if param.multiple and not isinstance(value, (list, tuple)):
        value = [value]
    if isinstance(value, (dict, set)) or (isinstance(value, (list, tuple)) and not param.multiple):
        raise ConfigError(f"config file {path}: {key} takes a single value, not a {_kind(value)}")
    try:
        param.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        raise ConfigError(f"config file {path}: {key}: {exc.message}") from None
    return value


def apply_config_file(ctx: click.Context, param, value):
    """Eager callback of `--config`: the file's options become the command's defaults (`ctx.default_map`)."""
    if value is None:
        return
    path = Path(value)
    options = _options_of(path, read_config_file(path), ctx.command.name)
    params = _params_by_key(ctx.command)
    defaults = {}
    for key, item in options.items():
        name = str(key).replace("-", "_")
        target = params.get(name)
        if target is None:
            close = difflib.get_close_matches(name, list(params), n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; see '{ctx.command_path} --help'"
            raise ConfigError(f"config file {path}: {key!r} is not an option of `{ctx.command_path}`{hint}")
        if target.name in defaults:
            raise ConfigError(f"config file {path} sets {target.name} twice (as {key!r} too)")
        if item is not None:
            defaults[target.name] = _check_value(ctx, target, str(key), item, path)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


CONFIG_OPTION = click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False),
    is_eager=True,  # read before every other option, so its values are their defaults
    expose_value=False,
    callback=apply_config_file,
    help="YAML or JSON file of options (e.g. 'steps: 1000'); the command line overrides it. "
    "RUN_DIR/train.json replays that run.",
)


PATH_OPTIONS = ("system_dir", "data")  # options naming local folders besides those of type click.Path


def _absolute(param: click.Parameter, value):
    """A path option's value made absolute, so a replay from another folder reads the same files."""
    if not isinstance(value, str) or "://" in value:
        return value
    if not (isinstance(param.type, click.Path) or param.name in PATH_OPTIONS):
        return value
    if isinstance(param.type, click.Path) or os.path.exists(value):
        return os.path.abspath(value)
    prefix, sep, rest = value.partition(":")  # --data folder:DIR, wds:SHARDS ...
    if sep and prefix.isidentifier() and rest and os.path.exists(rest):
        return f"{prefix}:{os.path.abspath(rest)}"
    return value


def replay_options(ctx: click.Context) -> dict:
    """The options this command runs with, as train.json records them for `--config RUN_DIR/train.json`."""
    params = {p.name: p for p in ctx.command.params}
    recorded = {}
    for name, value in sorted(ctx.params.items()):
        if name in NOT_REPLAYED or name in _SKIPPED or name not in params:
            continue
        value = list(value) if isinstance(value, tuple) else value
        recorded[name] = _absolute(params[name], value)
    return recorded
