"""The embedded job process's supervisor, with a stand-in program for the process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.embedded_jobs import EmbeddedJobs, StartFailed
from core.kv_memory import MemoryKeyValue
from core.settings import Settings


class Dying(EmbeddedJobs):
    """Its "job process" exits at once with status 3, before it could load anything."""

    starts = 0

    def _start(self) -> subprocess.Popen:
        type(self).starts += 1
        return subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])


def test_a_job_process_that_dies_before_it_loaded_fails_the_start_and_is_not_started_again():
    with pytest.raises(StartFailed, match="exited with 3 before it had loaded the models"):
        Dying(MemoryKeyValue(), Settings(_env_file=None, embedded_queue=4))
    assert Dying.starts == 1, "a process that never loaded is a start-up failure, not one to restart"
