"""The `metarun` command: Hydra composes the config, `run(cfg)` does the work.

Exit codes: 0 done; 2 a mistake the user can fix (a bad value, a missing file, a run folder that holds
another run's work, a full disk or a folder it may not write): one paragraph, no traceback; 3 a sweep
finished but some of its jobs failed (FAILED in their folders); 130 interrupted (Ctrl-C), 143 terminated
(SIGTERM): the message names the last checkpoint, and the same command resumes from it.

In a sweep (`metarun -m ...`) no job takes the others down: a failing job writes FAILED (with the
error) into its folder and the sweep goes on; unexpected errors are retried `retries` times, each
attempt resuming from the job's last checkpoint. A job whose folder is marked DONE by a run of the
same config is skipped, so a crashed sweep is relaunched with the same command and
`hydra.sweep.dir=<its folder>`.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import signal
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from metarun.errors import USER_OS_ERRORS, MetarunError, write_error_message
from metarun.paths import config_dir

log = logging.getLogger("metarun")

EXIT_USER_ERROR, EXIT_SWEEP_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 3, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler ending the job): stops the run as Ctrl-C does, so trackers are told,
    the lock is released and the message names the checkpoint to resume from."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


_task_started = False  # set when Hydra hands over: a SystemExit(1) before it is Hydra's composition error


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="run")
def _main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from metarun.config import resolved  # imported here so `metarun --help` stays fast
    from metarun.run import run
    from metarun.tracking.folder.run_dir import FAILED, RunDir

    global _task_started
    _task_started = True
    if isinstance(sys.stderr, HeldStderr):
        sys.stderr.release()
    hc = HydraConfig.get()
    run_dir, sweep = Path(hc.runtime.output_dir), hc.mode == RunMode.MULTIRUN
    attempts = 1 + (int(cfg.get("retries", 0)) if sweep else 0)
    for attempt in range(1, attempts + 1):
        try:
            if cfg.get("skip_done", True) and (done := RunDir(run_dir).finished_results(resolved(cfg))) is not None:
                log.info("skipping %s: a run of this config finished there (DONE); set skip_done=false to test it "
                         "again", run_dir)
                return _score(done)
            return _score(run(cfg))
        except (MissingMandatoryValue, MetarunError, OSError) as e:  # the config is wrong: retrying cannot help
            if isinstance(e, OSError) and e.errno not in USER_OS_ERRORS:
                if not sweep:
                    raise
                _record_failure(run_dir / FAILED, traceback.format_exc())
                continue
            message = _message(e)
            if not sweep:
                _remove_if_empty(run_dir)  # Hydra made it; a refused run leaves no folder behind
                _fail(message)
            _record_failure(run_dir / FAILED, f"metarun: error: {message}\n")
            return None
        except KeyboardInterrupt as e:
            last = run_dir / "checkpoints" / "last.pt"
            where = (f"the last checkpoint is {last}" if last.is_file() else "no checkpoint was written yet")
            how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
            again = (f"relaunch the sweep with the same command and hydra.sweep.dir={hc.sweep.dir} (finished jobs "
                     f"are skipped, this one resumes)" if sweep else
                     f"run the same command (with hydra.run.dir={run_dir}) to resume")
            print(f"metarun: {how}; {where}. To go on, {again}.", file=sys.stderr)
            sys.exit(EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED)
        except Exception:
            if not sweep:
                raise
            _record_failure(run_dir / FAILED, traceback.format_exc())
            if attempt < attempts:
                log.warning("job in %s failed (attempt %d of %d); retrying from its last checkpoint",
                            run_dir, attempt, attempts)
    return None


def _score(results: dict) -> float | None:
    scores = [v["acc"] for k, v in results["results"].items() if k.startswith("val/")]
    return sum(scores) / len(scores) if scores else None  # the value sweepers optimise


def _message(e: Exception) -> str:
    if isinstance(e, MissingMandatoryValue):
        return (f"the config value {e.full_key} is required but not set; give it on the command line, "
                f"e.g. `metarun {e.full_key}=...`.")
    if isinstance(e, OSError):
        return write_error_message(e)
    return str(e)


def _record_failure(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:  # the folder itself cannot be written: say so, and go on with the sweep
        log.error("cannot write %s (%s)", path, e.strerror)
    log.error("job in %s failed; the sweep goes on. Error in %s:\n%s", path.parent, path, text.strip().splitlines()[-1])


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()  # only ever removes an empty folder


def _fail(message: str) -> None:
    print(f"metarun: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def suggest_keys(args: list[str]) -> list[str]:
    """For `key=value` arguments naming no key of the config: `did you mean` lines (closest keys)."""
    from hydra import compose, initialize_config_dir

    from metarun.tracking.folder.run_dir import flatten

    groups = {d.name for d in config_dir().iterdir() if d.is_dir()}
    placed = [a for a in args if "@" in a.split("=", 1)[0] and not a.startswith(("+", "~"))]
    if placed:  # `data@eval.test.data=banking77`: a group put at a new key needs the +
        return [f"metarun: error: {a} puts a config group at a key the config does not have yet; add it with a "
                f"leading +: `metarun +{a}`." for a in placed]
    choices = [a for a in args if "=" in a and a.split("=", 1)[0].split("@")[0] in groups]
    keys = [a.split("=", 1)[0] for a in args
            if "=" in a and not a.startswith(("+", "~", "-")) and a not in choices and not a.startswith("hydra")]
    if not keys:
        return []
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            known = list(flatten(OmegaConf.to_container(compose("run", overrides=choices))))
    except Exception:  # the choices themselves do not compose: Hydra's message says why
        return []
    lines = []
    for key in keys:
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "no key of the config is close to it"
        lines.append(f"metarun: error: {key} is not a config key: {hint} (`metarun --cfg job` prints every key; "
                     f"+{key}=... adds a new one).")
    return lines


class HeldStderr:
    """sys.stderr until Hydra hands the composed config over: what Hydra writes is held, so that when it
    cannot compose the config metarun shows its own one paragraph (the key and the keys close to it)
    instead of Hydra's block and then its own. Once the run starts, writes pass straight through."""

    def __init__(self, stream):
        self.stream, self.held = stream, []

    def write(self, text: str) -> int:
        if self.held is None:
            return self.stream.write(text)
        self.held.append(text)
        return len(text)

    def release(self, show: bool = True) -> None:
        held, self.held = self.held, None
        if show and held:
            self.stream.write("".join(held))

    def __getattr__(self, name):  # flush, isatty, fileno, encoding ...
        return getattr(self.stream, name)


def main() -> None:
    from metarun.tracking.tables import callbacks

    signal.signal(signal.SIGTERM, _on_sigterm)
    stderr = sys.stderr = HeldStderr(sys.stderr)
    try:
        _main()
    except SystemExit as e:
        if e.code == 1 and not _task_started:  # Hydra could not compose the config
            lines = suggest_keys(sys.argv[1:])
            stderr.release(show=not lines)  # a key metarun can name replaces Hydra's block
            for line in lines:
                print(line, file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        raise
    finally:
        stderr.release()
        sys.stderr = stderr.stream
    if callbacks.failed_jobs:
        sys.exit(EXIT_SWEEP_FAILED)
