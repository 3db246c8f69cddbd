"""`metarun-eval RUN_DIR [overrides...]`: test a finished run's best checkpoint again, under another
evaluation protocol or on another dataset, without touching the run's folder.

    metarun-eval outputs/2026-12-01/10-00-00_..._protonet_banking77 +data@eval.test.data=hwu64 \\
        eval.test.data.test_all_classes=true
    metarun-eval RUN_DIR eval=fewrel_official --out outputs/eval/fewrel_official

The overrides may set only `eval.*` (a protocol such as `eval=fewrel_official`, a target such as
`+data@eval.test.data=hwu64`, a value such as `eval.test.episodes=1000`) and `trainer.device` /
`trainer.precision` / `trainer.progress`; every other setting is the run's saved one
(`.hydra/config.yaml`), since the checkpoint fixes it. The learner is built from the
run's config, `checkpoints/best.pt` is loaded into it (the untrained model when the run had no
training steps), and the test protocol's results go to a new folder (default: beside the run,
`<run>_eval_<time>`) whose results.json names the source run. Exit codes as for `metarun`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from metarun.errors import ConfigError, RunDirError, tool_main
from metarun.paths import config_dir

log = logging.getLogger("metarun")

CHANGEABLE = ("eval", "trainer.device", "trainer.precision", "trainer.progress")


def compose_eval_config(run_dir: Path, overrides: list[str]) -> dict:
    """The source run's saved config with the evaluation settings the overrides give, resolved against
    the run's own settings (so eval's `${data.name}` is the run's data), or a ConfigError.

    Group overrides (`eval=fewrel_official`, `+data@eval.test.data=hwu64`) take that part of the config
    from Hydra's composition; `key=value` overrides are applied to the run's saved values."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    from metarun.config import resolved
    from metarun.tracking.folder.run_dir import CONFIG, RunDir, config_diff

    saved = RunDir(run_dir).saved_config()
    if saved is None:
        raise ConfigError(f"{run_dir} has no {CONFIG}: it is not a metarun run folder (or not one this version "
                          f"wrote), so its config cannot be rebuilt.")
    keys = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    refused = [k for k in keys if not (k.split("@")[-1].split(".")[0] == "eval" or k in CHANGEABLE)]
    if refused:
        raise ConfigError(f"metarun-eval may change only the evaluation ({', '.join(CHANGEABLE)}); "
                          f"{', '.join(refused)} would change what the checkpoint was trained as. Train a new run.")
    groups = [o for o, k in zip(overrides, keys) if "@" in k or k == "eval"]
    cfg = OmegaConf.create(saved)
    if groups:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
                composed = compose("run", overrides=groups)
        except Exception as e:  # Hydra's composition errors: unknown groups
            raise ConfigError(f"{' '.join(groups)} does not compose: {str(e).splitlines()[0]}") from None
        finally:
            GlobalHydra.instance().clear()
        for key in (k for o, k in zip(overrides, keys) if o in groups):
            where = key.split("@", 1)[1] if "@" in key else key  # eval, or eval.test.data
            OmegaConf.update(cfg, where, OmegaConf.to_container(OmegaConf.select(composed, where)), merge=False)
    OmegaConf.set_struct(cfg, True)
    for override, key in zip(overrides, keys):
        if override in groups:
            continue
        try:
            OmegaConf.update(cfg, key, yaml.safe_load(override.split("=", 1)[1]), force_add=override.startswith("+"))
        except (ConfigKeyError, ConfigAttributeError):  # struct mode raises either, by how the key is missing
            composed_here = [o for o, k in zip(overrides, keys) if o in groups
                             and key.startswith((k.split("@", 1)[1] if "@" in k else k) + ".")]
            why = (f"{composed_here[0]} composes that part without it" if composed_here
                   else "a run saved before the option existed has none")
            raise ConfigError(f"{key} is not a key of the run's config ({why}); `+{key}=...` adds one.") from None
    config = resolved(cfg)
    changed = [k for k in config_diff(saved, config) if not any(k == c or k.startswith(c + ".") for c in CHANGEABLE)]
    if changed:  # a guard: only eval and the listed trainer keys can differ by construction
        raise ConfigError(f"metarun-eval would change {', '.join(changed[:6])}, which the checkpoint fixes.")
    return config


def evaluate_run(run_dir: str | Path, overrides: list[str], out_dir: str | Path | None = None) -> dict:
    """Test RUN_DIR's best checkpoint under the new evaluation settings; -> the new results."""
    from metarun.config import build
    from metarun.assembly import build_components, train_inputs
    from metarun.tracking.folder import episodes
    from metarun.tracking.tables.results import format_results, results_record
    from metarun.tracking.folder.checkpoint import Checkpointer
    from metarun.tracking.folder.run_dir import Claim, RunDir
    from metarun.trainer import TrainState

    started = time.time()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a folder; give the folder of a finished metarun run.")
    config = compose_eval_config(run_dir, overrides)
    cfg = OmegaConf.create(config)
    out = Path(out_dir) if out_dir else run_dir.parent / f"{run_dir.name}_eval_{time.strftime('%Y%m%d-%H%M%S')}"
    if out.resolve() == run_dir.resolve():
        raise RunDirError(f"the results of metarun-eval go to a new folder, not into the run {run_dir}; use --out.")
    trainer = build(cfg.trainer, "trainer")
    trainer.join_processes()
    c = build_components(cfg, config, trainer, trainer.dist)
    source = Checkpointer(run_dir)
    state = TrainState()
    if source.best.is_file():
        best = source.load(source.best)
        c.learner.load_trained_state(best["model"])
        state.best_step = state.step = int(best["step"])
        with contextlib.suppress(OSError, ValueError, KeyError):
            state.step = int(json.loads((run_dir / "results.json").read_text())["steps"])
        if not (run_dir / "DONE").is_file():
            log.warning("%s did not finish (no DONE): testing its best checkpoint so far (step %d)", run_dir,
                        state.best_step)
    elif int(config["trainer"]["max_steps"]) > 0:  # killed before its first validation: nothing trained to test
        raise RunDirError(f"{run_dir} has no checkpoints/best.pt: the run was stopped before its first validation, so "
                          f"it has no trained model to test. Resume it first (the same metarun command with "
                          f"hydra.run.dir={run_dir}).")
    else:
        log.warning("%s has no checkpoints/best.pt (a run without training steps): testing the model as built", run_dir)
    folder = RunDir(out)
    with folder:
        if folder.claim(config) != Claim.NEW:
            raise RunDirError(f"{out} already holds a run; give metarun-eval a new --out folder.")
        folder.hold()
        folder.prepare(Claim.NEW, config, overrides)
        with folder.log_file():
            scores = trainer.test(c.learner, c.tests)
            episodes.write(out, scores)
            results = results_record(cfg, c.learner, c.data, c.tests[0], train_inputs(c, state), state, scores,
                                     None, time.time() - started, out, c.unlabelled)
            results["source_run"] = str(run_dir)
            folder.finish(results, config)
            log.info("results of %s's checkpoint (%s):\n%s", run_dir, out, format_results(scores))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metarun-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the folder of a finished metarun run")
    parser.add_argument("overrides", nargs="*", help="eval.* overrides, e.g. +data@eval.test.data=hwu64")
    parser.add_argument("--out", help="folder for the results (default: beside the run, <run>_eval_<time>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    return tool_main("metarun-eval", lambda: evaluate_run(args.run_dir, args.overrides, args.out))


if __name__ == "__main__":
    sys.exit(main())
