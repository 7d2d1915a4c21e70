"""Fault injection shared by the stage tests: a checkpoint mirror that 'crashes' the stage, and
the processes a real kill left behind."""

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


def alive_in_group(pgid: int) -> list[int]:
    """Pids of the live processes (zombies excluded) in process group ``pgid``, read from /proc (Linux).

    After ``os.killpg(pgid, SIGKILL)`` a test waits for this to be empty: no orphaned child of a
    killed run (a trainer worker, a temporary Prefect server) may go on writing.
    """
    from pathlib import Path

    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except (OSError, IndexError):  # gone since listed
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids
