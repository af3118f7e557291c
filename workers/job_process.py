"""The embedded mode's job process: the models and the job runner, beside the API that started it.

The API (``app/dispatch.py: EmbeddedDispatcher``) keeps the jobs' store in memory and lends it over a
Unix socket (``core/kv_shared.py``); it starts this program with the socket's address, its key and the
API's settings as JSON on stdin. Over its channel the API sends ``("run", job_id)``; this process
answers ``("loaded", served, failed)`` once its models are loaded and ``("done", job_id)`` after each
run; ``("stop",)`` ends it. ``Settings.embedded_workers`` threads run the jobs (each with its torch
threads, as in a worker); one more sweeps expired leases, so that the jobs of a predecessor that died
run again. When the channel closes (the API died), the process ends too.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import sys
import threading
from multiprocessing.connection import Client, Connection

from core.contract import JobSpec
from core.jobs import JobRecords
from core.kv_shared import FAMILY, JOB_CHANNEL, SharedKeyValue
from core.settings import Settings
from core.telemetry import Telemetry
from models.registry import ModelRegistry
from workers.job_runner import JobRunner
from workers.lease_sweep import sweep_every
from workers.model_host import ModelHost

log = logging.getLogger("workers.job_process")


class JobProcess:
    def __init__(self, address: str, authkey: bytes, settings: Settings) -> None:
        self.settings = settings
        self.channel: Connection = Client(address, FAMILY, authkey=authkey)
        self.channel.send(JOB_CHANNEL)
        self._send_lock = threading.Lock()
        self.kv = SharedKeyValue(address, authkey)
        self.records = JobRecords(self.kv, settings.result_ttl_s)
        self.telemetry = Telemetry(self.kv)
        self.host = ModelHost(ModelRegistry(settings.model_dirs), settings.device)
        self.runner = JobRunner(self.records, self.telemetry, self.host, settings, owner=f"embedded:{os.getpid()}")
        self.jobs: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.stop = threading.Event()

    def send(self, message: tuple) -> None:
        with self._send_lock:
            self.channel.send(message)

    def serve(self) -> bool:
        """Load the models, report them, run what the channel sends until it says stop (True) or closes."""
        self.host.load_all()
        for name in self.host.served:
            self.telemetry.put_capabilities(name, self.host.capabilities(name))
        for index in range(self.settings.embedded_workers):
            threading.Thread(target=self._work, name=f"xai-job-{index}", daemon=True).start()
        sweeping = (self.records, self.settings, self._again, self.stop)
        threading.Thread(target=sweep_every, args=sweeping, name="xai-sweep", daemon=True).start()
        self.send(("loaded", self.host.served, self.host.failed))
        log.info("models loaded: %s; failed: %s", self.host.served, self.host.failed or "none")
        stopped = False
        while not stopped:
            try:
                message = self.channel.recv()
            except (EOFError, OSError):
                break
            if message[0] == "run":
                self.jobs.put(message[1])
            stopped = message[0] == "stop"
        self.stop.set()
        return stopped

    def _again(self, spec: JobSpec) -> None:
        self.jobs.put(spec.job_id)

    def _work(self) -> None:
        self.runner.enter_thread()
        while True:
            job_id = self.jobs.get()
            try:
                self.runner.run(job_id)
            except Exception:  # the runner ends jobs itself; this is the store gone (the API stopping)
                log.exception("job %s was not run to its end", job_id)
            try:
                self.send(("done", job_id))
            except OSError:
                return


def main() -> None:
    # Ctrl-C, or a SIGTERM to the whole group (systemd, tini -g), reaches this process too: the API stops
    # it on its channel, after the requests it serves; dying first would only have the API start another.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [job process %(process)d] %(name)s: %(message)s"
    )
    given = json.loads(sys.stdin.read())
    process = JobProcess(given["address"], bytes.fromhex(given["authkey"]), Settings.model_validate(given["settings"]))
    stopped = process.serve()
    if not stopped:  # the channel closed: the API died, and left its socket's directory behind
        shutil.rmtree(os.path.dirname(given["address"]), ignore_errors=True)
    # Running jobs cannot write their ends: the store goes with the API.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
