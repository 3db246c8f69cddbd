"""A test-only trainer callback: die like a killed job (SIGKILL) after a step, or halfway through
writing that step's last.pt. Runs started by `run_cli` can import it (tests/ is on their PYTHONPATH):
`kill_at(step)` gives the command-line overrides."""

import os
import signal

from metarun.callbacks import Callback


class KillAt(Callback):
    def __init__(self, step: int, during_save: bool = False):
        self.step, self.during_save = step, during_save

    def on_checkpoint(self, trainer, state, ckpt, snapshot) -> None:
        if self.during_save and state.step == self.step:
            ckpt.save(ckpt.last, snapshot, die_midway=True)  # the process dies inside

    def on_step_end(self, trainer, state) -> None:
        if state.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_at(step: int, during_save: bool = False) -> list[str]:
    return ["+callbacks.kill._target_=kill_callback.KillAt", f"+callbacks.kill.step={step}",
            f"+callbacks.kill.during_save={str(during_save).lower()}"]
