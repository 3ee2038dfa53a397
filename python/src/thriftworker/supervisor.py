"""The pre-fork supervisor of `thriftworker-py`: N worker processes, kept
alive, reloaded without dropping a call, stopped gracefully.

Each worker is a child process running `thriftworker-py --single` with the
same targets and settings; it writes `ready worker_id=...` on its stdout
(a pipe to us) each time the data plane accepts it, and logs to the stderr
we share. The supervisor never imports the targets itself (a reload must see
new code), and holds no ZeroMQ socket.

- A child that dies is restarted after a backoff that doubles per quick
  death (0.5 s up to 30 s; reset once a child has served for 30 s), and the
  log says how it died (exit status or signal).
- A child that exits 0 on its own was recycled (`--max-requests`): it is
  replaced at once.
- A child refused by the data plane (exit 2: wrong token, unknown service)
  stops the supervisor with exit status 2: restarting cannot fix that.
- SIGHUP: reload. N new children start; once all of them are READY, the old
  ones get SIGTERM (each sends DISCONNECT and finishes its calls), so no call
  is dropped. If the new ones are not all ready within `reload_timeout`, they
  are stopped and the old ones keep serving.
- SIGTERM/SIGINT: every child gets SIGTERM and leaves gracefully; the
  supervisor exits 0 once they have (SIGKILL after `stop_timeout`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ._fd import drain

log = logging.getLogger("thriftworker")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
#: A child that served this long resets its slot's backoff.
HEALTHY_AFTER = 30.0


@dataclass
class Child:
    slot: int
    generation: int
    proc: subprocess.Popen[bytes]
    started: float
    ready: bool = False
    stopping: bool = False
    buffer: bytes = b""


@dataclass
class Slot:
    backoff: float = BACKOFF_MIN
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Runs `workers` copies of `argv` (a `thriftworker-py --single` command)."""

    argv: Sequence[str]
    workers: int
    reload_timeout: float = 60.0
    stop_timeout: float = 60.0
    children: list[Child] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)
    generation: int = 0
    #: The generation being started by a reload, and when it began.
    reloading: tuple[int, float] | None = None
    exit_status: int | None = None
    _signals: list[int] = field(default_factory=list)

    def run(self) -> int:
        """Supervises until stopped; returns the exit status."""
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            self.slots = [Slot() for _ in range(self.workers)]
            for slot in range(self.workers):
                self._spawn(slot, self.generation)
            while self.exit_status is None or self._alive():
                self._turn()
            # The last children may have exited after the last turn's reap
            # (`_alive` sees them gone): log their exits too.
            self._reap()
        finally:
            signal.set_wakeup_fd(-1)
            for s, h in old.items():
                signal.signal(s, h)
        log.info("supervisor stopped")
        return self.exit_status or 0

    # -- events ----------------------------------------------------------
    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _turn(self) -> None:
        for key, _ in self._sel.select(timeout=0.2):
            if key.fd == self._wake_r:
                drain(self._wake_r)
            else:
                self._read_child(key.data)
        while self._signals:
            self._handle_signal(self._signals.pop(0))
        self._reap()
        now = time.monotonic()
        self._restart_due(now)
        self._check_reload(now)
        if self.exit_status is not None:
            self._enforce_stop_timeout(now)

    def _handle_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self._start_reload()
        elif self.exit_status is None:
            log.info("%s: stopping %d worker process(es) gracefully", signal.Signals(signum).name, self._alive())
            self._stop_all(0)

    def _read_child(self, child: Child) -> None:
        assert child.proc.stdout is not None
        try:
            data = os.read(child.proc.stdout.fileno(), 4096)
        except BlockingIOError:
            return
        if not data:
            self._sel.unregister(child.proc.stdout)
            return
        child.buffer += data
        while b"\n" in child.buffer:
            line, child.buffer = child.buffer.split(b"\n", 1)
            if line.startswith(b"ready ") and not child.ready:
                child.ready = True
                log.info(
                    "worker process %d (slot %d) ready: %s",
                    child.proc.pid,
                    child.slot,
                    line.decode(errors="replace"),
                )

    # -- children --------------------------------------------------------
    def _spawn(self, slot: int, generation: int) -> None:
        # The child leaves if we die (it watches its parent pid), so a
        # SIGKILLed supervisor leaves no orphan serving on unwatched.
        env = dict(os.environ, THRIFTWORKER_SUPERVISOR_PID=str(os.getpid()))
        proc = subprocess.Popen(list(self.argv), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        child = Child(slot, generation, proc, time.monotonic())
        self._sel.register(proc.stdout, selectors.EVENT_READ, child)
        self.children.append(child)
        log.info("worker process %d spawned (slot %d, generation %d)", proc.pid, slot, generation)

    def _alive(self) -> int:
        return sum(1 for c in self.children if c.proc.poll() is None)

    def _reap(self) -> None:
        for child in list(self.children):
            status = child.proc.poll()
            if status is None:
                continue
            self.children.remove(child)
            if child.proc.stdout is not None:
                with contextlib.suppress(KeyError, ValueError):  # unregistered at EOF
                    self._sel.unregister(child.proc.stdout)
                child.proc.stdout.close()
            self._on_exit(child, status)

    def _on_exit(self, child: Child, status: int) -> None:
        how = _describe(status)
        if child.stopping or self.exit_status is not None:
            log.info("worker process %d (slot %d) %s", child.proc.pid, child.slot, how)
            return
        if child.generation != self.generation:
            return  # a reload's new child that was given up on, or an old one
        if status == 2:
            log.error("worker process %d refused by the data plane: stopping (exit 2)", child.proc.pid)
            self._stop_all(2)
            return
        slot = self.slots[child.slot]
        now = time.monotonic()
        if status == 0:
            log.info("worker process %d (slot %d) recycled: starting a new one", child.proc.pid, child.slot)
            slot.restart_at = now
            return
        if now - child.started >= HEALTHY_AFTER:
            slot.backoff = BACKOFF_MIN
        log.warning(
            "worker process %d (slot %d) %s: restarting in %.1fs",
            child.proc.pid,
            child.slot,
            how,
            slot.backoff,
        )
        slot.restart_at = now + slot.backoff
        slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)

    def _restart_due(self, now: float) -> None:
        if self.exit_status is not None:
            return
        for i, slot in enumerate(self.slots):
            if slot.restart_at is not None and now >= slot.restart_at:
                slot.restart_at = None
                self._spawn(i, self.generation)

    def _stop_all(self, status: int) -> None:
        self.exit_status = status
        self._stop_at = time.monotonic() + self.stop_timeout
        for child in self.children:
            self._terminate(child)

    def _terminate(self, child: Child) -> None:
        child.stopping = True
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)

    def _enforce_stop_timeout(self, now: float) -> None:
        if now < self._stop_at:
            return
        for child in self.children:
            if child.proc.poll() is None:
                log.warning("worker process %d did not stop in %.0fs: killing it", child.proc.pid, self.stop_timeout)
                child.proc.kill()

    # -- reload ----------------------------------------------------------
    def _start_reload(self) -> None:
        if self.exit_status is not None or self.reloading is not None:
            log.info("SIGHUP ignored: %s", "stopping" if self.exit_status is not None else "a reload runs")
            return
        generation = self.generation + 1
        log.info("SIGHUP: reloading: starting %d new worker process(es)", self.workers)
        self.reloading = (generation, time.monotonic())
        for slot in range(self.workers):
            self._spawn(slot, generation)

    def _check_reload(self, now: float) -> None:
        if self.reloading is None:
            return
        generation, began = self.reloading
        new = [c for c in self.children if c.generation == generation]
        if len(new) == self.workers and all(c.ready for c in new):
            old = [c for c in self.children if c.generation != generation]
            log.info("reload: %d new process(es) ready; stopping %d old one(s) gracefully", len(new), len(old))
            self.generation = generation
            self.reloading = None
            for slot in self.slots:
                slot.restart_at = None
                slot.backoff = BACKOFF_MIN
            for child in old:
                self._terminate(child)
        elif now - began > self.reload_timeout or len(new) < self.workers:
            log.error("reload failed: the new worker processes did not all become ready; keeping the old ones")
            self.reloading = None
            for child in new:
                self._terminate(child)


def _describe(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"killed by {name}"
    return f"exited with status {status}"
