"""Config nodes into objects: `build` instantiates a node's `_target_` with the objects the runner
already holds (datasets, encoders) and turns config mistakes into errors that name the options."""

from __future__ import annotations

import inspect

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from metarun.errors import ConfigError, MetarunError


# Keys a data config may hold for another group to read (not arguments of its loader): the encoder
# length a dataset needs, read by the encoder configs as ${oc.select:data.encoder_max_length,64}.
DATA_HINTS = ("encoder_max_length",)


def build(node: DictConfig | dict, group: str, **objects):
    """Instantiate `node._target_` with the node's resolved keys and `objects` passed as they are."""
    params = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if group == "data" or group.endswith(".data"):
        params = {k: v for k, v in params.items() if k not in DATA_HINTS}
    try:
        # partial first: Hydra would turn dataclass arguments (datasets) into configs
        return instantiate(params, _partial_=True)(**objects)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, MetarunError):
            raise cause from None
        raise
    except TypeError as e:
        if "keyword argument" in str(e) or "required positional" in str(e):
            accepted = list(inspect.signature(get_object(params["_target_"])).parameters)
            raise ConfigError(
                f"the {group} config does not fit {params['_target_']}: {e}. Options it accepts: "
                f"{', '.join(a for a in accepted if a not in objects)}."
            ) from None
        raise


def without(node: DictConfig, *keys: str) -> dict:
    """`node` resolved (against the whole config) into a dict, leaving out `keys`, which are not resolved."""
    return {k: OmegaConf.to_container(node[k], resolve=True) if OmegaConf.is_config(node[k]) else node[k]
            for k in node if k not in keys}
