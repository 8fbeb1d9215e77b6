"""A real one-node Slurm cluster on 127.0.0.1 for the executor tests, and the session fixture that runs it.

Everything lives in one temporary folder: a fresh MUNGE key and socket, ``slurm.conf``, the controller's state, the
node's spool and the logs. The daemons (``munged``, ``slurmctld``, ``slurmd``) run in the foreground as children
of the test process and are stopped at the end of the session, after every job has been cancelled. Clients find
the cluster through ``$SLURM_CONF``, which the fixture sets for the session (submitit's ``sbatch``/``squeue`` and
the jobs' own ``srun`` inherit it).

The configuration avoids what breaks Slurm in a container: no cgroups (``proctrack/linuxproc``, ``task/none``,
``jobacct_gather/none``), no accounting database (``sacct`` is off; the executor reads ``squeue``),
``SlurmdParameters=config_overrides`` so that the node's CPU and memory counts come from the file rather than from
what the container reports, the real short host name as node and controller name with ``127.0.0.1`` as address
(no DNS), free TCP ports so that two test sessions on one machine do not meet, and a short ``KillWait`` so that a
cancelled job ends within seconds.

Debian provides the daemons: ``apt-get install slurmctld slurmd slurm-client munge`` (``.ci/run`` does this).
The fixture skips, saying why, when they are missing or when the tests do not run as root (``slurmd`` must be root
to start jobs).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REQUIRED = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "srun", "scontrol")
PARTITION = "debug"

SLURM_CONF = """\
# One-node test cluster written by tests/slurm_cluster.py
ClusterName=qpmtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SlurmdParameters=config_overrides
DefMemPerCPU=256
ReturnToService=2
KillWait=5
PropagateResourceLimits=NONE
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def unavailable_reason() -> str | None:
    """Why a test cluster cannot start here (None when it can)."""
    missing = [b for b in REQUIRED if shutil.which(b) is None]
    if missing:
        return (f"Slurm/MUNGE binaries missing ({', '.join(missing)}); install them with "
                "`apt-get install slurmctld slurmd slurm-client munge`")
    if os.geteuid() != 0:
        return "the one-node Slurm test cluster needs root (slurmd starts jobs as their user)"
    return None


def _die_with_parent() -> None:
    """In a daemon about to start: ask Linux to send it SIGTERM when the test process dies, even by ``kill -9``."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """munged + slurmctld + slurmd on 127.0.0.1, configured in ``root``.

    Args:
        root: an empty folder for the key, socket, configuration, state, spool and logs.
        cpus: CPUs the node offers (jobs of 1 CPU run this many at a time).
        memory_mb: memory the node offers, in MiB.
    """

    def __init__(self, root: Path, *, cpus: int = 2, memory_mb: int = 2048) -> None:
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.cpus = cpus
        self.memory_mb = memory_mb
        self._procs: list[subprocess.Popen] = []
        self.started_in_s: float | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment of a client of this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> str:
        """Run a Slurm client command against this cluster; returns its stdout."""
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60, check=check).stdout

    def _write_files(self) -> None:
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the MUNGE socket must be reachable by every client
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(SLURM_CONF.format(
            host=self.host, root=self.root, munge_socket=self.munge_socket, ctld_port=_free_port(),
            slurmd_port=_free_port(), cpus=self.cpus, memory_mb=self.memory_mb, partition=PARTITION))

    def _spawn(self, name: str, *cmd: str) -> None:
        out = open(self.root / "log" / f"{name}.out", "wb")
        self._procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True, preexec_fn=_die_with_parent))
        out.close()

    def start(self, timeout_s: float = 60.0) -> None:
        """Write the files, start the three daemons, and wait until the node is idle.

        Raises:
            RuntimeError: when the node is not idle within ``timeout_s``; shows the end of every daemon's log.
        """
        t0 = time.monotonic()
        self._write_files()
        m = self.root / "munge"
        self._spawn("munged", "munged", "--foreground", "--force", f"--key-file={m / 'munge.key'}",
                    f"--socket={self.munge_socket}", f"--pid-file={m / 'munged.pid'}",
                    f"--log-file={self.root / 'log' / 'munged.log'}", f"--seed-file={m / 'munged.seed'}")
        self._wait(lambda: self.munge_socket.exists(), t0 + timeout_s, "munged to create its socket")
        self._spawn("slurmctld", "slurmctld", "-D", "-i", "-f", str(self.conf))
        self._spawn("slurmd", "slurmd", "-D", "-f", str(self.conf), "-N", self.host)
        self._wait(lambda: self.node_state() == "idle", t0 + timeout_s, f"node {self.host} to be idle")
        self.started_in_s = time.monotonic() - t0

    def node_state(self) -> str:
        """``sinfo``'s state of the node (e.g. ``idle``, ``mixed``), or ``""`` while the controller is not up."""
        out = subprocess.run(["sinfo", "--noheader", "--nodes", self.host, "--format=%T"], env=self.env,
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() if out.returncode == 0 else ""

    def _wait(self, ready, deadline: float, what: str) -> None:
        while not ready():
            dead = [p.args[0] for p in self._procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                why = f"{', '.join(dead)} exited" if dead else "timed out"
                raise RuntimeError(f"test Slurm cluster: waiting for {what}, {why}.\n{self.log_tails()}")
            time.sleep(0.2)

    def log_tails(self, lines: int = 15) -> str:
        """The end of every daemon log, for error messages."""
        parts = []
        for log in sorted((self.root / "log").glob("*")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons (each politely, then by force)."""
        if self.node_state():
            subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True, timeout=30)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.run("squeue", "--noheader", "--format=%i", check=False).strip():
                time.sleep(0.5)
        for proc in reversed(self._procs):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        self._procs = []
        for pid in self._job_processes():  # steps that outlived slurmd would wait for it forever
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def _job_processes(self) -> list[int]:
        """Processes this cluster started for jobs (step daemons, scripts, srun, Python) that are still alive.

        They are recognised by ``SLURM_CONF=<this cluster's slurm.conf>`` in the environment they started with;
        the path is unique to this cluster's temporary folder.
        """
        mark = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running one-node cluster for the whole session; ``$SLURM_CONF`` points at it meanwhile."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        cluster.stop()
