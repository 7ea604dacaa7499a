"""rabo on Flower gives the simulator's numbers (docs/algorithm.md §8: same config and seed,
identical metrics and parameters): the app's messages through an in-process loopback grid, node
faults, and a real SuperLink with three SuperNodes on 127.0.0.1 (`rabo flower local`, slow)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file

from rabo import checkpoint, cli
from rabo.accounting import FlopCache
from rabo.cli import main
from rabo.config import RunConfig
from rabo.errors import ConfigError, NoClientsError
from rabo.experiment import build
from rabo.rounds import Job, Reply, RunState, run_round
from rabo.runtime import flower, local, wire
from rabo.runtime.loop import run
from rabo.runtime.reaper import alive
from rabo.runtime.simulate import LocalTransport

TOL = 1e-6


class LoopbackGrid:
    """A Flower Grid whose nodes are the ClientApp called in this process: node k hosts the
    clients of ``hosts[k]``, a ``client-ids`` string or a whole node config (a simulated node's
    ``partition-id``); ``tamper(node, reply)`` may change a reply or drop it (None)."""

    def __init__(self, config: dict, hosts: dict[int, str | dict], tamper=None):
        self.config, self.hosts, self.tamper = config, hosts, tamper
        self.replies: dict[str, Message] = {}
        self.sent: list[tuple[int, str]] = []

    def get_node_ids(self) -> list[int]:
        return list(self.hosts)

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id
            node = message.metadata.dst_node_id
            self.sent.append((node, message.metadata.message_type))
            hosts = self.hosts[node]
            context = Context(run_id=1, node_id=node, state=RecordDict(),
                              node_config=hosts if isinstance(hosts, dict)
                              else {"client-ids": hosts},
                              run_config={"rabo-config": json.dumps(self.config)})
            try:
                reply = flower.client_app(message, context)
            except Exception as err:  # noqa: BLE001 (flwr-clientapp replies so to a raising app)
                reply = Message(Error(code=0, reason=repr(err)), reply_to=message)
            if self.tamper is not None and message.metadata.message_type == "train":
                reply = self.tamper(node, reply)
            if reply is not None:
                self.replies[message.object_id] = reply
            ids.append(message.object_id)
        return ids

    def pull_messages(self, ids: list[str]) -> list[Message]:
        return [self.replies.pop(i) for i in ids if i in self.replies]


@pytest.fixture
def task_identity(monkeypatch):
    """Flower creates messages for the task of this process; outside Flower there is none."""
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def assert_same_run(sim: Path, other: Path, exact: bool = True) -> None:
    """Equal final parameters and metrics (all but wall-clock seconds) up to TOL, the same
    config.json byte for byte and, if ``exact``, the same final.safetensors byte for byte.
    Not exact: where the simulator stacks clients (:mod:`rabo.stacked`) that Flower runs on
    different nodes, in other stacks, whose sums round differently (by an ulp or so)."""
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            for d in (sim, other)]
    assert len(rows[0]) == len(rows[1]) > 0
    for a, b in zip(*rows):
        assert set(a) == set(b)
        for key in a.keys() - {"seconds"}:
            if isinstance(a[key], float) and isinstance(b[key], float):
                assert math.isclose(a[key], b[key], rel_tol=0, abs_tol=TOL), (key, a, b)
            else:
                assert a[key] == b[key], (key, a[key], b[key])
    final = [load_file(str(d / "final.safetensors")) for d in (sim, other)]
    assert final[0].keys() == final[1].keys()
    for name in final[0]:
        assert torch.allclose(final[0][name], final[1][name], rtol=0, atol=TOL), name
    for name in ("final.safetensors", "config.json")[0 if exact else 1:]:
        assert (sim / name).read_bytes() == (other / name).read_bytes(), name


def test_wire_keeps_names_dtypes_and_values():
    job = Job(3, {"g": torch.tensor([0, 2, 5])},
              {"w": torch.randn(3, 2, dtype=torch.float64)},
              {"b": torch.randn(4), "e": torch.ones(0)})
    phase, round, [back] = wire.decode_jobs(wire.encode_jobs("outer", 7, [job]))
    assert (phase, round, back.client) == ("outer", 7, 3)
    for got, want in ((back.index, job.index), (back.x, job.x), (back.y, job.y)):
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name])


def test_hosted_clients_from_node_config():
    assert flower.hosted_clients({"client-ids": "0,3,6"}, 10) == [0, 3, 6]
    assert flower.hosted_clients({"client-id": 4}, 10) == [4]
    assert flower.hosted_clients({}, 10) == []


def test_hosted_clients_of_a_simulated_node():
    """Flower's simulation engine gives node p of N ``partition-id=p``, ``num-partitions=N``:
    it hosts clients p, p+N, … below the client count; a node config's ids take precedence."""
    def sim(p: int, n: int, clients: int, **more) -> list[int]:
        return flower.hosted_clients({"partition-id": p, "num-partitions": n, **more}, clients)

    assert sim(0, 3, 10) == [0, 3, 6, 9]
    assert sim(1, 3, 10) == [1, 4, 7]
    assert sim(2, 3, 10) == [2, 5, 8]
    assert sim(4, 10, 10) == [4]
    assert sim(3, 5, 3) == []                             # more nodes than clients
    assert sim(1, 3, 10, **{"client-ids": "5"}) == [5]
    every = sorted(c for p in range(4) for c in sim(p, 4, 10))
    assert every == list(range(10))                       # each client on exactly one node


NODE_CONFIGS = {"client-ids": {11: "0,3,6,9", 12: "1,4,7", 13: "2,5,8"},
                "partition-id": {11 + p: {"partition-id": p, "num-partitions": 3}
                                 for p in range(3)}}


@pytest.mark.parametrize("nodes", list(NODE_CONFIGS))
def test_flower_app_in_process_matches_simulator(nodes, tmp_path, task_identity):
    exp = build(RunConfig(problem="quadratic", rounds=2, clients=10))
    config = exp.config.to_dict()
    run(exp, tmp_path / "sim", progress=False)
    grid = LoopbackGrid(config, NODE_CONFIGS[nodes])
    hosts = flower.discover(grid, 10, wait=5.0)
    assert hosts == {c: 11 + c % 3 for c in range(10)}
    run(build(RunConfig(**config)), tmp_path / "flower", progress=False,
        transport=flower.FlowerTransport(grid, hosts, timeout=5.0))
    assert_same_run(tmp_path / "sim", tmp_path / "flower", exact=False)   # stacked apart
    # one message per node and phase: 3 hellos, then 2 rounds × 2 phases × 3 nodes
    assert [t for _, t in grid.sent].count("train") == 12


def test_flower_apps_build_a_users_problem_from_its_reference(tmp_path, monkeypatch,
                                                              task_identity):
    """The ServerApp and the ClientApp (over the loopback grid) build a user's problem from
    the reference `rabo run FILE.py:Class` wrote into config.json (an absolute path: the apps
    run in other directories) and run what the simulator runs."""
    from test_user_problem import TINY

    (tmp_path / "tiny.py").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "tiny.py:Tiny", "--clients", "4", "--capacities", "1,0.5",
                 "--no-progress", "--out", "sim"]) == 0
    config = json.loads((tmp_path / "sim" / "config.json").read_text())
    monkeypatch.chdir(tmp_path / "sim")
    grid = LoopbackGrid(config, {11: "0,2", 12: "1,3"})
    settings = {"rabo-config": json.dumps(config), "out-dir": str(tmp_path / "flower"),
                "timeout": 5.0, "resume": False}
    flower.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                              run_config=settings))
    assert_same_run(tmp_path / "sim", tmp_path / "flower")
    assert [t for _, t in grid.sent].count("train") == 4 * 2 * 2   # rounds × phases × nodes


def test_silent_erring_and_malformed_nodes_fail_their_clients(task_identity):
    exp = build(RunConfig(problem="quadratic", rounds=1, clients=10))

    def tamper(node: int, reply: Message) -> Message | None:
        if node == 12:
            return None                                   # never answers
        if node == 13:                                    # Δ of the wrong shape
            reply.content["2/delta"] = wire.to_record({"y": torch.zeros(1)})
        return reply

    grid = LoopbackGrid(exp.config.to_dict(), {11: "0,1", 12: "3,4", 13: "2", 14: "5,6",
                                               15: "7,8,9"}, tamper)
    hosts = flower.discover(grid, 10, wait=0.5)
    for client in (7, 8, 9):                              # as if their node had left
        del hosts[client]
    transport = flower.FlowerTransport(grid, hosts, timeout=0.3)
    state = RunState(*exp.problem.init_params(exp.config.seed))
    metrics = run_round(exp, state, transport)
    assert metrics["failed"] == [2, 3, 4, 7, 8, 9]
    assert metrics["clients"] == [0, 1, 5, 6]
    assert metrics["inner_loss"] is not None and metrics["outer_loss"] is not None


def test_a_node_whose_app_raises_fails_its_clients(task_identity):
    exp = build(RunConfig(problem="quadratic", rounds=1, clients=4, capacities=[1.0, 0.5]))
    grid = LoopbackGrid(exp.config.to_dict(), {11: "0,1", 12: "2,3"})
    hosts = flower.discover(grid, 4, wait=0.5)
    hosts[2] = 11                                         # node 11 refuses client 2's job,
    grid.hosts[12] = "not-a-number"                       # node 12's app raises
    metrics = run_round(exp, RunState(*exp.problem.init_params(0)),
                        flower.FlowerTransport(grid, hosts, timeout=0.3))
    assert metrics["failed"] == [2, 3] and metrics["clients"] == [0, 1]


def server_context(config: dict, out: Path, timeout: object, resume: bool = False) -> Context:
    """The ServerApp's context as ``flwr run`` gives it from rabo's app config."""
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                   run_config={"rabo-config": json.dumps(config), "out-dir": str(out),
                               "timeout": timeout, "resume": resume})


def test_discovery_stops_the_run_when_a_client_has_no_node(task_identity):
    grid = LoopbackGrid(RunConfig(problem="quadratic", clients=4).to_dict(),
                        {11: "0,1", 12: {}})                  # node 12 names no clients
    with pytest.raises(NoClientsError, match=r"^no node hosts client\(s\) 2,3 of 4 after 0.3s "
                                             r"\(1 node\(s\) answered\)"):
        flower.discover(grid, 4, wait=0.3)


def test_server_app_with_no_client_reachable_fails_without_training(tmp_path, task_identity):
    """Before hosted_clients read partition-id, simulated nodes hosted nobody: the ServerApp
    failed every client every round and saved the initial parameters as the result."""
    config = RunConfig(problem="quadratic", rounds=2, clients=4,
                       capacities=[1.0, 0.5]).to_dict()
    grid = LoopbackGrid(config, {11: {}, 12: {}})
    with pytest.raises(NoClientsError, match=r"^no node hosts client\(s\) 0,1,2,3 of 4"):
        flower.main(grid, server_context(config, tmp_path / "run", 0.3))
    assert [t for _, t in grid.sent].count("train") == 0
    assert not (tmp_path / "run" / "final.safetensors").exists()


def test_server_app_stops_when_a_phase_gets_no_reply_and_resumes(tmp_path, task_identity):
    """From round 2 no node answers: the run stops in round 2's inner phase with a one-line
    reason, round 1 checkpointed (though checkpoint_every is 3); resumed on healthy nodes, it
    ends with the simulator's numbers."""
    config = RunConfig(problem="quadratic", rounds=3, clients=4, capacities=[1.0, 0.5],
                       checkpoint_every=3).to_dict()
    run(build(RunConfig(**config)), tmp_path / "sim", progress=False)
    out = tmp_path / "flower"

    def silent_after_round_1(node: int, reply: Message) -> Message | None:
        return reply if [t for _, t in grid.sent].count("train") <= 4 else None

    grid = LoopbackGrid(config, {11: "0,2", 12: "1,3"}, silent_after_round_1)
    with pytest.raises(NoClientsError) as stopped:
        flower.main(grid, server_context(config, out, 0.3))
    assert str(stopped.value).startswith("round 2 inner: none of the 4 client(s) 0,1,2,3 "
                                         "answered within 0.3s")
    assert "\n" not in str(stopped.value)
    assert checkpoint.peek(out)["round"] == 1
    assert [json.loads(line)["round"] for line in
            (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (out / "final.safetensors").exists()
    flower.main(LoopbackGrid(config, {11: "0,2", 12: "1,3"}),
                server_context(config, out, 5.0, resume=True))
    assert_same_run(tmp_path / "sim", out, exact=False)                   # stacked apart


@pytest.mark.parametrize("timeout", [0, -1.0, "nan", float("inf"), "soon"])
def test_server_app_refuses_a_timeout_not_above_zero(timeout, tmp_path, task_identity):
    config = RunConfig(problem="quadratic", rounds=1, clients=2, capacities=[1.0]).to_dict()
    grid = LoopbackGrid(config, {11: "0,1"})
    with pytest.raises(ConfigError, match=r"^timeout="):
        flower.main(grid, server_context(config, tmp_path / "run", timeout))
    assert grid.sent == [] and not (tmp_path / "run").exists()


TIMEOUTS = [["--timeout", "0"], ["--timeout", "-5"], ["--timeout", "nan"],
            ["--timeout", "inf"], ["--timeout", "86401"], ["--timeout", "1e12"]]
NODES = [["--supernodes", "0"], ["--supernodes", "-3"], ["--supernodes", "11"],
         ["--supernodes", "200000"], ["--clients", "1000", "--supernodes", "257"]]
RAY_RESOURCES = [["--cpus", "0"], ["--cpus", "2", "--node-cpus", "3"], ["--node-gpus", "-1"]]


@pytest.mark.parametrize("mode, flags", [("local", f) for f in TIMEOUTS + NODES]
                         + [("simulate", f) for f in TIMEOUTS + NODES[:4] + RAY_RESOURCES])
def test_flower_cli_refuses_bad_settings_up_front(mode, flags, tmp_path, capsys):
    """Refused before the run directory is touched (``--overwrite`` would empty it)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code = cli.main(["flower", mode, "quadratic", "--out", str(out), "--overwrite", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("rabo: error: "), err
    assert f"{flags[-2].lstrip('-').replace('-', '_')}=" in err, err
    assert (out / "keep.txt").exists()


@pytest.mark.parametrize("mode, clients, nodes, allowed", [
    ("local", 10, "200000", "1 to 10 (one node per client at most, 10 clients)"),
    ("local", 1000, "257", "1 to 256 (at most 256 SuperNode processes, 1000 clients)"),
    ("simulate", 1000, "1001", "1 to 1000 (one node per client at most, 1000 clients)")])
def test_flower_cli_names_the_allowed_node_counts(mode, clients, nodes, allowed, capsys):
    code = cli.main(["flower", mode, "quadratic", "--clients", str(clients),
                     "--supernodes", nodes])
    assert code == 2
    assert capsys.readouterr().err == (f"rabo: error: supernodes={nodes} is not allowed; give "
                                       f"an integer from {allowed}\n")


def test_node_count_defaults_and_bounds():
    """3 SuperNodes by default, never more than the clients; one simulated node per client."""
    assert local.node_count(None, 10, simulated=False) == 3
    assert local.node_count(None, 2, simulated=False) == 2
    assert local.node_count(None, 10, simulated=True) == 10
    assert local.node_count(10, 10, simulated=False) == 10
    assert local.node_count(256, 100_000, simulated=False) == 256
    assert local.node_count(5000, 5000, simulated=True) == 5000
    for bad in (True, 2.0, "3", 0, 11):
        with pytest.raises(local.FlowerError, match=rf"^supernodes={bad!r} is not allowed"):
            local.node_count(bad, 10, simulated=False)


# --- a real deployment: SuperLink + 3 SuperNodes on 127.0.0.1 ----------------------------------
def descendants(pid: int, groups: list[int]) -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of ``pid``, and of every member of the
    process ``groups`` (a process whose parent died stays in its group); Linux /proc."""
    table: dict[int, tuple[int, int, int]] = {}   # pid → parent pid, process group, start
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (int(fields[1]), int(fields[2]), int(fields[19]))
            except (OSError, IndexError, ValueError):
                continue
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(child)
    found = {p for p, (_, group, _) in table.items() if group in groups and p != pid}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.add(child)
        todo.extend(children.get(child, []))
    return sorted((p, table[p][2]) for p in found)


class ProcessWatch:
    """Records every descendant of a process (pid, start time → parent pid, command line)
    while it runs, and every member of a process group led by one of them (a process whose
    parent was killed leaves the tree but stays in its group)."""

    def __init__(self, pid: int):
        self.pid, self.done = pid, threading.Event()
        self.seen: dict[tuple[int, int], tuple[int, list[str]]] = {}
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _groups(self) -> list[int]:
        """The pids seen that still name their process (live or a zombie) or name none:
        Linux reuses no pid that a process group still has as its id."""
        def ours(pid: int, start: int) -> bool:
            try:
                return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]
                           .split()[19]) == start
            except FileNotFoundError:
                return True
            except (OSError, IndexError, ValueError):
                return False

        return [pid for pid, start in list(self.seen) if ours(pid, start)]

    def _scan(self) -> None:
        for pid, start in descendants(self.pid, self._groups()):
            try:  # read again each time: between fork and exec it is the parent's
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except (OSError, ValueError):
                continue
            if cmd or (pid, start) not in self.seen:
                self.seen[(pid, start)] = ppid, cmd.split("\0")

    def _loop(self) -> None:
        while not self.done.is_set():
            self._scan()
            time.sleep(0.2)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self._scan()  # whatever started since the last look

    def count(self, program: str) -> int:
        """Processes seen running ``program`` (a console script: argv[0] or, run by its
        interpreter, argv[1]), not counting a fork of one that had not yet called exec."""
        def runs(cmd: list[str]) -> bool:
            return any(Path(arg).name == program for arg in cmd[:2])

        cmds = {pid: cmd for (pid, _), (_, cmd) in self.seen.items()}
        return sum(runs(cmd) and not runs(cmds.get(ppid, []))
                   for ppid, cmd in self.seen.values())

    def alive(self) -> dict[tuple[int, int], list[str]]:
        return {d: cmd for d, (_, cmd) in self.seen.items() if alive(*d)}


def rabo(*args: str, timeout: float) -> tuple[int, str, ProcessWatch]:
    """Run the rabo command in a child process, watching what it starts; SIGTERM on timeout."""
    proc = subprocess.Popen([sys.executable, "-m", "rabo.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    watch = ProcessWatch(proc.pid)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        out += f"\n[killed after {timeout}s]"
    finally:
        watch.stop()
    return proc.returncode, out, watch


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="watches processes in /proc")
@pytest.mark.parametrize("problem", ["quadratic", "losstuning"])
def test_flower_local_matches_simulator(problem, tmp_path):
    common = [problem, "--method", "rabo", "--rounds", "2", "--clients", "10", "--seed", "0"]
    code, log, _ = rabo("run", *common, "--out", str(tmp_path / "sim"), "--quiet", timeout=300)
    assert code == 0, log
    start = time.monotonic()
    code, log, watch = rabo("flower", "local", "--supernodes", "3", *common,
                            "--out", str(tmp_path / "flower"), "--timeout", "120", timeout=480)
    print(f"rabo flower local on {problem}: {time.monotonic() - start:.0f}s")
    assert code == 0, log
    assert watch.count("flower-superlink") == 1 and watch.count("flower-supernode") == 3, \
        sorted(watch.seen.values())
    assert watch.count("flwr-clientapp") >= 3 * 4       # a message per node and phase
    assert watch.alive() == {}, watch.alive()
    assert "rabo: 3 node(s) host 10 of 10 clients" in log, log
    assert_same_run(tmp_path / "sim", tmp_path / "flower", exact=problem != "quadratic")


def mid_run(out: Path, *flags: str, mode: tuple[str, ...] = ("flower", "local")
            ) -> tuple[subprocess.Popen, ProcessWatch]:
    """``rabo flower local`` (or ``mode``) on the quadratic for 100 rounds (3 nodes, 10
    clients), watched, once its first round is logged."""
    proc = subprocess.Popen([sys.executable, "-m", "rabo.cli", *mode, "quadratic",
                             "--rounds", "100", "--out", str(out), "--quiet", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch = ProcessWatch(proc.pid)
    deadline = time.monotonic() + 300
    try:
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, proc.poll()
            time.sleep(0.5)
    except BaseException:
        clean_up(proc, watch)
        raise
    return proc, watch


def run_folder(watch: ProcessWatch) -> Path:
    """The temporary folder of the watched run (``flwr run FOLDER/app``)."""
    return next(Path(arg).parent for _, cmd in watch.seen.values() for arg in cmd
                if Path(arg).name == "app" and Path(arg).parent.name.startswith("rabo-flower-"))


def clean_up(proc: subprocess.Popen, watch: ProcessWatch) -> None:
    """After a test, whatever it asserted: kill the rabo process and what it left, by pid."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()
    watch.stop()
    for pid, started in watch.alive():
        if alive(pid, started):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="watches processes in /proc")
def test_flower_local_stops_every_process_when_interrupted(tmp_path):
    proc, watch = mid_run(tmp_path / "flower")
    try:
        proc.send_signal(signal.SIGTERM)                  # like Ctrl-C: clean up, exit 130
        log, _ = proc.communicate(timeout=120)
        watch.stop()
        work = run_folder(watch)
        assert proc.returncode == 130, log
        assert watch.count("flower-supernode") == 3 and watch.count("flwr-serverapp") == 1, \
            sorted(watch.seen.values())
        assert watch.alive() == {}, watch.alive()
        assert not work.exists(), sorted(work.iterdir())
    finally:
        clean_up(proc, watch)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="watches processes in /proc")
@pytest.mark.parametrize("mode", ["local", "simulate"])
def test_flower_killed_with_sigkill_leaves_nothing_behind(mode, tmp_path):
    """kill -9 of ``rabo flower local`` mid-run: within 10 s not one process it started is
    alive (by pid and start time: SuperLink, SuperNodes, their SuperExecs, flwr run, the
    ServerApp and ClientApp processes, the supervisor), and its temporary folder is gone; so
    too for ``rabo flower simulate`` (Ray's processes instead of the SuperNodes')."""
    if mode == "simulate":
        pytest.importorskip("ray")
    proc, watch = mid_run(tmp_path / "flower", mode=tuple(SIMULATE if mode == "simulate"
                                                          else ["flower", "local"]))
    try:
        work = run_folder(watch)
        assert work.is_dir()
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.communicate(timeout=60)      # rabo's output ends when the supervisor exits
        watch.stop()                      # what started before the kill and its groups
        while (watch.alive() or work.exists()) and time.monotonic() < killed + 10:
            time.sleep(0.1)
        seconds = time.monotonic() - killed
        print(f"rabo flower {mode} killed with SIGKILL: {len(watch.seen)} processes, all "
              f"gone and the folder removed after {seconds:.1f}s")
        started = {"local": {"flower-superlink": 1, "flower-supernode": 3, "flwr-serverapp": 1},
                   "simulate": {"flower-superlink": 1, "flwr-simulation": 1, "raylet": 1}}
        assert {name: watch.count(name) for name in started[mode]} == started[mode], \
            sorted(watch.seen.values())
        assert mode == "simulate" or watch.count("flwr-clientapp") >= 3
        assert watch.alive() == {}, watch.alive()
        assert not work.exists(), sorted(work.iterdir())
    finally:
        clean_up(proc, watch)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="watches processes in /proc")
def test_flower_local_stops_when_its_superlink_is_killed(tmp_path):
    """kill -9 of the SuperLink mid-run: rabo exits 2 within a minute with one line naming
    it, every process it started is stopped (the ServerApp's too, which Flower leaves
    running), the run's checkpoint stays, the logs stay in the folder named."""
    out = tmp_path / "flower"
    proc, watch = mid_run(out, "--checkpoint-every", "1")
    work = None
    try:
        (link, _), = [(d, cmd) for d, (_, cmd) in watch.seen.items()
                      if any(Path(arg).name == "flower-superlink" for arg in cmd[:2])]
        os.kill(link[0], signal.SIGKILL)
        killed = time.monotonic()
        log, _ = proc.communicate(timeout=120)
        seconds = time.monotonic() - killed
        watch.stop()
        work = run_folder(watch)
        print(f"rabo flower local with its SuperLink killed: exit {proc.returncode} after "
              f"{seconds:.1f}s")
        assert proc.returncode == 2 and seconds < 60, (seconds, log)
        assert log.splitlines() == [
            "rabo: error: the SuperLink was killed by SIGKILL during the run; the run's last "
            + f"checkpoint stays in {str(out)!r}; logs in {work}"], log
        assert watch.count("flwr-serverapp") == 1, sorted(watch.seen.values())
        assert watch.alive() == {}, watch.alive()
        assert (work / "superlink.log").exists()
        assert checkpoint.peek(out)["round"] >= 1
    finally:
        clean_up(proc, watch)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


# --- Flower's simulation engine: a SuperLink simulating the nodes, ClientApps in Ray actors ---
SIMULATE = ["flower", "simulate", "--supernodes", "3", "--cpus", "2", "--node-cpus", "1"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="watches processes in /proc")
def test_flower_simulate_matches_simulator(tmp_path):
    pytest.importorskip("ray")
    common = ["quadratic", "--method", "rabo", "--rounds", "2", "--clients", "10", "--seed", "0"]
    code, log, _ = rabo("run", *common, "--out", str(tmp_path / "sim"), "--quiet", timeout=300)
    assert code == 0, log
    start = time.monotonic()
    code, log, watch = rabo(*SIMULATE, *common, "--out", str(tmp_path / "flower"),
                            "--timeout", "120", timeout=300)
    print(f"rabo flower simulate, 3 simulated nodes: {time.monotonic() - start:.0f}s")
    assert code == 0, log
    assert watch.count("flower-superlink") == 1 and watch.count("flwr-simulation") == 1
    assert watch.count("flower-supernode") == 0 and watch.count("raylet") == 1, \
        sorted(watch.seen.values())
    assert watch.alive() == {}, watch.alive()
    assert "rabo: 3 node(s) host 10 of 10 clients" in log, log
    assert "(Flower, simulation engine, 3 nodes): 2 rounds" in log, log
    assert_same_run(tmp_path / "sim", tmp_path / "flower", exact=False)   # stacked apart


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="watches processes in /proc")
def test_flower_simulate_without_reachable_clients_exits_2_in_one_line(tmp_path):
    """No node answers discovery within 0.1s (Ray is still starting): exit 2 with the
    ServerApp's reason on one line, nothing saved as a result, every process stopped."""
    pytest.importorskip("ray")
    out = tmp_path / "flower"
    code, log, watch = rabo(*SIMULATE, "quadratic", "--rounds", "2", "--clients", "4",
                            "--capacities", "1,0.5", "--out", str(out), "--timeout", "0.1",
                            timeout=300)
    last = log.strip().splitlines()[-1]
    logs = re.search(r"; logs in (\S+)$", last)
    if logs:
        shutil.rmtree(logs.group(1), ignore_errors=True)
    assert code == 2, log
    assert last.startswith("rabo: error: the Flower run failed: no node hosts client(s) "
                           "0,1,2,3 of 4 after 0.1s (0 node(s) answered)"), log
    assert logs, last
    assert not (out / "final.safetensors").exists()
    assert watch.alive() == {}, watch.alive()


class Dropping:
    """The simulator's transport with ``clients`` failing (no reply) from round ``start``
    (0-based) on, as a node that has died."""

    def __init__(self, transport: LocalTransport, clients: set[int], start: int):
        self.transport, self.clients, self.start = transport, clients, start

    def __call__(self, phase: str, round: int, jobs: list[Job]) -> list[Reply | None]:
        if round < self.start:
            return self.transport(phase, round, jobs)
        kept = iter(self.transport(phase, round, [j for j in jobs if j.client not in self.clients]))
        return [None if job.client in self.clients else next(kept) for job in jobs]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="watches processes in /proc")
def test_flower_local_survives_a_killed_supernode(tmp_path):
    """SIGKILL one of 3 SuperNodes as round 1 is logged: the run finishes, rounds 2.. name the
    node's clients failed, each of those rounds costs at most the timeout more than a healthy
    one, and the results are the simulator's with those clients failing from round 2."""
    timeout = 30  # seconds a phase waits; a healthy phase here takes ~10s (3 app starts)
    out = tmp_path / "flower"
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "rabo.cli", "flower", "local",
                             "--supernodes", "3", "quadratic", "--method", "rabo", "--rounds", "4",
                             "--clients", "10", "--seed", "0", "--out", str(out),
                             "--timeout", str(timeout)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch = ProcessWatch(proc.pid)

    def logged() -> list[dict]:
        path = out / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] \
            if path.exists() else []

    try:
        deadline = time.monotonic() + 300
        while not logged():
            assert proc.poll() is None and time.monotonic() < deadline, proc.poll()
            time.sleep(0.05)
        nodes = {d: cmd for d, (_, cmd) in watch.seen.items()
                 if any(Path(arg).name == "flower-supernode" for arg in cmd[:2])}
        (victim, cmd), = [(d, cmd) for d, cmd in nodes.items() if alive(*d)
                          and 'client-ids="1,4,7"' in cmd]            # node k hosts k, k+3, …
        os.kill(victim[0], signal.SIGKILL)
        killed_after = len(logged())                                  # rounds logged before
        dead = flower.hosted_clients(
            {"client-ids": cmd[cmd.index("--node-config") + 1].split("=", 1)[1].strip('"')}, 10)
        log, _ = proc.communicate(timeout=480)
        seconds = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        watch.stop()
        left = watch.alive()
        for pid, started in left:                      # stop what the run left, by pid
            if alive(pid, started):
                os.kill(pid, signal.SIGKILL)
    print(f"rabo flower local with a SuperNode killed after round {killed_after}: "
          f"{seconds:.0f}s")
    assert proc.returncode == 0, log
    assert left == {}, left
    assert watch.count("flower-supernode") == 3, sorted(watch.seen.values())
    assert dead == [1, 4, 7] and killed_after == 1, (dead, killed_after)
    rows = logged()
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    first = next(t for t, r in enumerate(rows) if r["failed"])
    assert first == killed_after, (first, rows)    # the round right after the kill, not later
    for r in rows:
        failed = dead if r["round"] > first else []
        assert r["failed"] == failed, r
        assert r["clients"] == [c for c in range(10) if c not in failed], r
    for r in rows[first:]:                          # a dead node costs at most the timeout
        assert r["seconds"] < rows[0]["seconds"] + timeout, (r, rows[0])
    for client in dead:                             # the round log names the missing clients
        assert f"round {first + 1} inner: client {client} " in log, log
    exp = build(RunConfig(problem="quadratic", method="rabo", rounds=4, clients=10, seed=0))
    run(exp, tmp_path / "sim", progress=False,
        transport=Dropping(LocalTransport(exp, FlopCache()), set(dead), first))
    assert_same_run(tmp_path / "sim", out, exact=False)                   # stacked apart
