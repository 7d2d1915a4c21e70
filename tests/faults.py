"""Fault injection shared by the stage tests: a checkpoint mirror that 'crashes' the stage."""

from __future__ import annotations

from posttrain.checkpoints import RemoteCheckpoints


class Killed(RuntimeError):
    """The simulated crash."""


class KillAfter(RemoteCheckpoints):
    """Mirrors checkpoints like the real thing, then raises :class:`Killed` once the trainer
    checkpoint of step ``kill_at`` is in the store (as a process killed right after it would)."""

    def __init__(self, store, prefix, kill_at):
        super().__init__(store, prefix)
        self.kill_at = kill_at

    def upload(self, local, phase=""):
        super().upload(local, phase)
        if local.name == f"checkpoint-{self.kill_at}":
            raise Killed(local.name)
