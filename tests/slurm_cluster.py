"""A real one-node SLURM cluster for the test session (fixture ``slurm_cluster``).

The fixture follows the verified recipe in ``shared/reference/slurm-single-node.md``:

* installs ``slurm-wlm`` and ``munge`` with apt where the daemons are missing and that is allowed
  (root on Debian); elsewhere the requesting test is skipped with the reason;
* writes a one-node ``/etc/slurm/slurm.conf`` (and ``gres.conf``) for this machine (node name, CPUs,
  sockets and RealMemory taken from ``slurmd -C``) and removes them again at the end. It must be the
  default path: the plugin's job step drops ``SLURM_CONF`` before its inner ``srun``. A
  ``slurm.conf`` this fixture did not write (a site's real cluster) is never replaced: the test skips;
* starts ``munged`` (unless one already answers), ``slurmctld`` and ``slurmd`` in the foreground as
  children of the test process, on free TCP ports, and waits until ``sinfo`` shows the node idle;
* at session end cancels jobs still queued, then stops exactly the daemons it started, by PID, and
  reaps them, so no process is left running.

Choices the recipe leaves open, made for a test cluster:

* No accounting (``accounting_storage/none``): callers must use ``--slurm-status-command squeue``
  and must not set ``slurm_account``. ``MinJobAge=3600`` keeps finished jobs (names, comments,
  requests, final states and exit codes) in the controller for the whole session, which is what
  :meth:`SlurmCluster.jobs` reads (``scontrol show job``) as the scheduler's own record of what ran.
* The node advertises one generic GPU (``Gres=gpu:<type>:1``, ``/dev/null`` as its device file), so a
  rule asking for ``gpu: 1`` is really scheduled as a GPU job (``--gpus``) and GPU jobs queue one
  at a time, as on a one-GPU node. Nothing in the job can use it; CPU torch runs as usual.
* State, spool, log and pid files live in a temporary directory and the controller starts with a
  clean state (``-c``), so job ids and records belong to this session only.

Set ``CTXSCALE_REQUIRE_SLURM=1`` (as ``.ci/run`` should) to turn "SLURM unavailable" skips into failures.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

REQUIRE_ENV = "CTXSCALE_REQUIRE_SLURM"
PARTITION = "debug"
GPU_TYPE = "testgpu"
DAEMONS = ("slurmctld", "slurmd", "munged")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
APT_PACKAGES = ("slurm-wlm", "munge")
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 30
CONF_DIR = Path("/etc/slurm")
CONF_MARKER = "# One-node test cluster written by tests/slurm_cluster.py"


def _unavailable(reason: str) -> None:
    """Skip the requesting test, or fail it where the environment demands a real cluster."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"SLURM is required ({REQUIRE_ENV}=1) but unavailable: {reason}", pytrace=False)
    pytest.skip(f"SLURM unavailable: {reason}")


def _binary(name: str) -> str | None:
    """Where a SLURM/munge program lives; daemons are in /usr/sbin, which root's PATH may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def _missing_programs() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS, "munge", "unmunge") if _binary(name) is None]


def _install_with_apt() -> None:
    """apt-get install the scheduler; refresh the package lists once if the first try fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *APT_PACKAGES]
    log.info("installing %s with apt (about a minute)", " ".join(APT_PACKAGES))
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        log.info("apt-get install failed; running apt-get update and retrying")
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        _unavailable(f"apt-get install {' '.join(APT_PACKAGES)} failed: {result.stderr.strip()[-400:]}")


def _ensure_installed() -> None:
    if not _missing_programs():
        return
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        _unavailable(f"{', '.join(_missing_programs())} not installed and not root, so apt cannot install them")
    if not Path("/etc/debian_version").exists() or shutil.which("apt-get") is None:
        _unavailable(f"{', '.join(_missing_programs())} not installed and this is not a Debian system with apt-get")
    _install_with_apt()
    if _missing_programs():
        _unavailable(f"after apt-get install, still missing: {', '.join(_missing_programs())}")


def _free_ports(count: int) -> list[int]:
    """Ports free right now, all different (each probe stays bound until all are chosen)."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _node_hardware() -> dict[str, str]:
    """The node line ``slurmd -C`` prints for this machine, as a dict (NodeName, CPUs, ... RealMemory)."""
    result = subprocess.run([_binary("slurmd"), "-C"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        _unavailable(f"slurmd -C failed: {result.stderr.strip()[-300:]}")
    first_line = result.stdout.strip().splitlines()[0]
    return dict(item.split("=", 1) for item in first_line.split())


def _munge_works() -> bool:
    munge = subprocess.run([_binary("munge"), "-n"], capture_output=True, timeout=30)
    if munge.returncode != 0:
        return False
    unmunge = subprocess.run([_binary("unmunge")], input=munge.stdout, capture_output=True, timeout=30)
    return unmunge.returncode == 0


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _children_named(command: str) -> list[int]:
    """PIDs of this process's children whose command name is ``command`` (zombies included)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # stat is "pid (comm) state ppid ..."; comm may contain spaces, so split at the last ')'.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if comm == command and ppid == os.getpid():
            children.append(int(entry.name))
    return children


def _set_child_subreaper(enabled: bool) -> None:
    """Adopt orphaned descendants (slurmd double-forks slurmstepd) so they can be reaped, not left as zombies.

    Without it the job step daemons are re-parented to PID 1, which on these machines never reaps them.
    """
    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_child_subreaper, int(enabled), 0, 0, 0)


# One "Key=value" field of `scontrol show job --oneliner`; values may hold single spaces, keys never do.
_SCONTROL_FIELD = re.compile(r"(?:^|\s)([A-Za-z][\w/:]*)=(.*?)(?=\s+[A-Za-z][\w/:]*=|\s*$)")


@dataclass(frozen=True)
class SlurmJob:
    """One job as the controller records it (``scontrol show job``): what was asked and how it ended."""

    job_id: int
    name: str
    comment: str
    state: str
    exit_code: str
    memory: str  # MinMemoryNode, e.g. "2000M"
    time_limit: str  # e.g. "00:30:00"
    tres_per_job: str  # e.g. "gres:gpu:testgpu:1" for --gpus=testgpu:1; "" when none
    std_out: str

    @classmethod
    def from_scontrol(cls, line: str) -> "SlurmJob":
        fields = dict(_SCONTROL_FIELD.findall(line))
        return cls(
            job_id=int(fields["JobId"]),
            name=fields.get("JobName", ""),
            comment=fields.get("Comment", "").strip(),
            state=fields.get("JobState", ""),
            exit_code=fields.get("ExitCode", ""),
            memory=fields.get("MinMemoryNode", ""),
            time_limit=fields.get("TimeLimit", ""),
            tres_per_job=fields.get("TresPerJob", ""),
            std_out=fields.get("StdOut", ""),
        )


@dataclass
class SlurmCluster:
    """A running one-node cluster; ``env`` is the environment every client command needs."""

    root: Path
    conf_path: Path
    node_name: str
    partition: str
    gpu_type: str
    cpus: int
    real_memory_mb: int
    env: dict[str, str]
    _daemons: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def client(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a SLURM client command (``sinfo``, ``squeue``, ...) against this cluster."""
        program, *rest = args
        return subprocess.run(
            [_binary(program), *rest], env=self.env, capture_output=True, text=True, check=check, timeout=timeout
        )

    def jobs(self) -> list[SlurmJob]:
        """Every job the controller knows in this session, oldest first, with its final state."""
        listing = self.client("scontrol", "show", "job", "--oneliner").stdout
        jobs = [SlurmJob.from_scontrol(line) for line in listing.splitlines() if line.startswith("JobId=")]
        return sorted(jobs, key=lambda job: job.job_id)

    def node_state(self) -> str:
        result = self.client("sinfo", "--noheader", "--nodes", self.node_name, "--format=%T", check=False)
        return result.stdout.strip()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of every daemon log, for failure messages."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # -- lifecycle -------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], **popen_kwargs) -> None:
        out = open(self.log_dir / f"{name}.stdout.log", "ab")
        self._daemons[name] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env, **popen_kwargs
        )
        out.close()
        log.info("started %s (pid %d)", name, self._daemons[name].pid)

    def start(self) -> None:
        _set_child_subreaper(True)
        if _munge_works():
            log.info("munged already answers; using it and leaving it alone")
        else:
            self._start_munged()
        self._spawn("slurmctld", [_binary("slurmctld"), "-D", "-c"])
        self._wait_for(lambda: self.client("scontrol", "ping", check=False).returncode == 0, "slurmctld to answer")
        self._spawn("slurmd", [_binary("slurmd"), "-D"])
        self._wait_for(lambda: self.node_state() == "idle", f"node {self.node_name} to be idle")

    def _start_munged(self) -> None:
        munge_user = pwd.getpwnam("munge")
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chown(run_dir, munge_user.pw_uid, munge_user.pw_gid)
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run([_binary("mungekey") or "mungekey", "--create"], check=True, timeout=60)
            os.chown(key, munge_user.pw_uid, munge_user.pw_gid)
        # Its PRNG seed goes to the temporary directory, not /var/lib/munge. --force: a socket left by a
        # munged that died is stale (we checked that none answers).
        seed_dir = self.root / "munge"
        seed_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(seed_dir, munge_user.pw_uid, munge_user.pw_gid)
        self._spawn(
            "munged",
            [_binary("munged"), "--foreground", "--force", f"--seed-file={seed_dir / 'munged.seed'}"],
            user=munge_user.pw_uid,
            group=munge_user.pw_gid,
            extra_groups=[],
        )
        self._wait_for(_munge_works, "munged to answer")

    def _wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, process in self._daemons.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with code {process.returncode} while waiting for {what}\n{self.log_tail()}"
                    )
            if condition():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {START_TIMEOUT_S} s waiting for {what}\n{self.log_tail()}")

    def stop(self) -> None:
        """Cancel leftover jobs, then stop the daemons this fixture started (newest first) by PID."""
        if "slurmctld" in self._daemons and self._daemons["slurmctld"].poll() is None:
            active = self.client("squeue", "--noheader", "--format=%i", check=False).stdout.split()
            if active:
                log.info("cancelling jobs still queued or running: %s", " ".join(active))
                self.client("scancel", *active, check=False)
                deadline = time.monotonic() + STOP_TIMEOUT_S
                while time.monotonic() < deadline and self.client(
                    "squeue", "--noheader", "--format=%i", check=False
                ).stdout.split():
                    time.sleep(0.5)
        for name in reversed(list(self._daemons)):
            process = self._daemons[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    log.warning("%s (pid %d) ignored SIGTERM; killing it", name, process.pid)
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT_S)
            log.info("stopped %s (pid %d, exit %s)", name, process.pid, process.returncode)
        # Job step daemons (slurmstepd) were adopted by this process: end any still running, reap all.
        for pid in _children_named("slurmstepd"):
            try:
                if Path(f"/proc/{pid}/exe").exists():
                    log.warning("killing leftover slurmstepd pid %d", pid)
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        _set_child_subreaper(False)

    def running_daemon_pids(self) -> list[int]:
        return [process.pid for process in self._daemons.values() if _process_alive(process.pid)]


def _write_config(root: Path, hardware: dict[str, str], slurm_user: pwd.struct_passwd) -> tuple[Path, int]:
    CONF_DIR.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # slurmctld drops to SlurmUser, which must reach and write its state, log and pid files.
    root.chmod(0o755)
    for sub in ("state", "log", "run"):
        os.chown(root / sub, slurm_user.pw_uid, slurm_user.pw_gid)
    node = hardware["NodeName"]
    real_memory = int(hardware["RealMemory"])
    cpus = int(hardware["CPUs"])
    # Free ports rather than 6817/6818: anything already listening there is no obstacle.
    controller_port, node_port = _free_ports(2)
    topology = " ".join(
        f"{key}={hardware[key]}"
        for key in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
        if key in hardware
    )
    # slurmd drops a GPU that has no device file; /dev/null stands in (no cgroup confinement uses it).
    (CONF_DIR / "gres.conf").write_text(f"{CONF_MARKER}\nNodeName={node} Name=gpu Type={GPU_TYPE} File=/dev/null\n")
    conf = f"""\
{CONF_MARKER}; removed at the end of the test session.
ClusterName=ctxscaletest
SlurmctldHost={node}(127.0.0.1)
SlurmUser={slurm_user.pw_name}
SlurmdUser=root
SlurmctldPort={controller_port}
SlurmdPort={node_port}
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
MinJobAge=3600
InactiveLimit=0
KillWait=10
Waittime=0
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 {topology} RealMemory={real_memory} Gres=gpu:{GPU_TYPE}:1 State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    conf_path = CONF_DIR / "slurm.conf"
    conf_path.write_text(conf)
    return conf_path, cpus


def _foreign_config() -> Path | None:
    """A SLURM config file in /etc/slurm that this fixture did not write, if any."""
    for name in ("slurm.conf", "gres.conf"):
        path = CONF_DIR / name
        if path.exists() and not path.read_text(errors="replace").startswith(CONF_MARKER):
            return path
    return None


def _remove_config() -> None:
    for name in ("slurm.conf", "gres.conf"):
        path = CONF_DIR / name
        if path.exists() and path.read_text(errors="replace").startswith(CONF_MARKER):
            path.unlink()


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start the cluster once per session; skip (or fail under CTXSCALE_REQUIRE_SLURM=1) where impossible."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        _unavailable("starting slurmctld/slurmd needs root")
    _ensure_installed()
    try:
        slurm_user = pwd.getpwnam("slurm")
        pwd.getpwnam("munge")
    except KeyError as missing:
        _unavailable(f"system user missing after install: {missing}")
    foreign = _foreign_config()
    if foreign is not None:
        _unavailable(f"{foreign} exists and was not written by this fixture (a real cluster?); not replacing it")
    hardware = _node_hardware()
    root = Path(tempfile.mkdtemp(prefix="ctxscale-slurm-"))
    conf_path, cpus = _write_config(root, hardware, slurm_user)
    cluster = SlurmCluster(
        root=root,
        conf_path=conf_path,
        node_name=hardware["NodeName"],
        partition=PARTITION,
        gpu_type=GPU_TYPE,
        cpus=cpus,
        real_memory_mb=int(hardware["RealMemory"]),
        env={**os.environ, "SLURM_CONF": str(conf_path)},
    )
    try:
        cluster.start()
    except RuntimeError as failure:
        cluster.stop()
        _remove_config()
        shutil.rmtree(root, ignore_errors=True)
        _unavailable(str(failure))
    try:
        yield cluster
    finally:
        cluster.stop()
        _remove_config()
        survivors = cluster.running_daemon_pids()
        if survivors:
            raise RuntimeError(f"SLURM daemons still running after teardown: {survivors}")
        shutil.rmtree(root, ignore_errors=True)
