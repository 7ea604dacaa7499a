"""Checkpoints and resume: a run killed with SIGKILL and resumed ends exactly like an
uninterrupted one (docs/algorithm.md §8); bad resumes are refused with one line."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rabo import checkpoint, rundir
from rabo.accounting import FlopCache
from rabo.cli import main
from rabo.config import RunConfig
from rabo.experiment import build
from rabo.rounds import RunState
from rabo.runtime.loop import run
from rabo.runtime.simulate import LocalTransport, simulate_round

WALL = {"seconds"}
RUN = [sys.executable, "-m", "rabo.cli", "run", "losstuning", "--rounds", "24",
       "--checkpoint-every", "5", "--no-progress", "--threads", "1", "--set", "eval_every=4"]


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in WALL} for r in rows]


def _same_final(a: Path, b: Path) -> None:
    fa, fb = load_file(str(a / "final.safetensors")), load_file(str(b / "final.safetensors"))
    assert fa.keys() == fb.keys()
    for name in fa:
        assert fa[name].equal(fb[name]), name


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(RUN + ["--out", str(whole)], check=True, env=env, capture_output=True)
    kill_after = random.Random().randint(1, 22)   # any moment: a random round
    proc = subprocess.Popen(RUN + ["--out", str(cut)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        lines = (cut / "metrics.jsonl").read_text().count("\n") \
            if (cut / "metrics.jsonl").exists() else 0
        if lines >= kill_after:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if not (cut / "checkpoint" / "state.safetensors").exists():   # killed before round 5
        subprocess.run(RUN + ["--out", str(cut), "--overwrite"], check=True, env=env,
                       capture_output=True)
    else:
        done = subprocess.run([sys.executable, "-m", "rabo.cli", "run", "--resume", str(cut),
                               "--no-progress"], env=env, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr
    assert _metrics(cut) == _metrics(whole)
    _same_final(cut, whole)


def test_resume_in_process_continues_from_the_checkpoint(tmp_path):
    out = tmp_path / "r"
    args = ["run", "quadratic", "--rounds", "6", "--checkpoint-every", "2", "--out", str(out),
            "--no-progress"]
    assert main(args) == 0
    full = _metrics(out)
    # pretend the run died after round 4: drop the last checkpoint and lines past round 4
    rows = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(rows[:5]) + '\n{"round": 6, "trunc')
    config = checkpoint.peek(out)["config"]
    exp = build(RunConfig(**config))
    x, _, _, _ = checkpoint.load(out, exp.problem.init_params(0))
    state = RunState(*exp.problem.init_params(0))
    for _ in range(4):
        simulate_round(exp, state, FlopCache())
    checkpoint.save(out, state.x, state.y, 4, config)
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert _metrics(out) == full
    assert torch.equal(load_file(str(out / "final.safetensors"))["x.x"], x["x"])


@pytest.fixture
def finished(tmp_path):
    out = tmp_path / "done"
    assert main(["run", "quadratic", "--rounds", "2", "--out", str(out), "--no-progress"]) == 0
    return out


def _one_line_error(capsys, needle):
    err = capsys.readouterr().err
    assert needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_resume_of_a_finished_run_is_refused(finished, capsys):
    assert main(["run", "--resume", str(finished)]) == 2
    _one_line_error(capsys, "already finished (round 2 of 2)")


def test_resume_with_a_changed_config_names_the_keys(finished, capsys):
    assert main(["run", "quadratic", "--resume", str(finished), "--rounds", "5",
                 "--set", "outer_lr=0.1"]) == 2
    _one_line_error(capsys, "differs in outer_lr, rounds")
    assert main(["run", "quadratic", "--resume", str(finished), "--set", "problem.lam=0.5"]) == 2
    _one_line_error(capsys, "differs in problem.lam, rounds;")


def test_resume_compares_data_dir_as_a_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    out = tmp_path / "done"
    assert main(["run", "quadratic", "--rounds", "2", "--out", str(out), "--data-dir", "../data",
                 "--no-progress"]) == 0
    # the same directory written absolutely is no difference; another directory is
    assert main(["run", "quadratic", "--resume", str(out), "--rounds", "5",
                 "--data-dir", str(tmp_path / "data")]) == 2
    _one_line_error(capsys, "differs in rounds;")
    assert main(["run", "quadratic", "--resume", str(out), "--rounds", "5",
                 "--data-dir", str(tmp_path / "other")]) == 2
    _one_line_error(capsys, "differs in data_dir, rounds;")


def test_corrupted_checkpoint_is_one_line(finished, capsys):
    path = finished / "checkpoint" / "state.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    assert main(["run", "--resume", str(finished)]) == 2
    _one_line_error(capsys, "is corrupt or not written by rabo")


def test_checkpoint_of_another_problem_is_refused(finished, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["run", "losstuning", "--rounds", "1", "--out", str(other),
                 "--no-progress"]) == 0
    (finished / "checkpoint" / "state.safetensors").write_bytes(
        (other / "checkpoint" / "state.safetensors").read_bytes())
    (finished / "config.json").write_text((finished / "config.json").read_text())
    config = json.loads((finished / "config.json").read_text())
    config["rounds"] = 10
    (finished / "config.json").write_text(json.dumps(config))
    assert main(["run", "--resume", str(finished)]) == 2
    _one_line_error(capsys, "belongs to another run (problem 'losstuning'")


def test_resume_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    _one_line_error(capsys, "no config.json")


def test_load_returns_tensors_in_the_problems_order(tmp_path):
    """Regression: safetensors returns names sorted; a loss summing over y in another order
    rounded differently after resume (inner_loss differed in the 9th digit)."""
    x = {"b": torch.ones(2), "a": torch.zeros(2)}
    y = {"z.w": torch.ones(3), "a.w": torch.full((3,), 2.0)}
    checkpoint.save(tmp_path, x, y, 3, {"problem": "p"})
    lx, ly, done, config = checkpoint.load(tmp_path, (x, y))
    assert list(lx) == ["b", "a"] and list(ly) == ["z.w", "a.w"] and done == 3
    assert all(torch.equal(lx[n], x[n]) for n in x) and config == {"problem": "p"}


def test_the_same_tensors_and_metadata_are_written_as_the_same_bytes(tmp_path):
    """Regression: safetensors writes the metadata in a random order, so the same state gave
    other bytes each time (a Flower run's final.safetensors differed from the simulator's);
    now each write gives one byte string, a header of sorted metadata that loads back."""
    x = {"b": torch.ones(2), "a": torch.arange(3.0, dtype=torch.float64)}
    meta = {"format": "f", "round": "3", "zeta": "ζ", "alpha": "a", "config": '{"k": 1}'}
    files = [tmp_path / f"{k}.safetensors" for k in range(12)]
    for path in files:
        checkpoint.write_tensors(path, x, meta)
    data = files[0].read_bytes()
    assert {p.read_bytes() for p in files} == {data}
    size = int.from_bytes(data[:8], "little")
    header = data[8:8 + size]
    assert size % 8 == 0 and len(header) - len(header.rstrip(b" ")) < 8   # padded as before
    assert list(json.loads(header)["__metadata__"]) == \
        ["alpha", "config", "format", "round", "sha256", "zeta"]
    tensors, back = checkpoint.read_tensors(files[0])
    assert {k: v for k, v in back.items() if k != "sha256"} == meta
    assert tensors.keys() == x.keys() and all(torch.equal(tensors[n], x[n]) for n in x)


def test_ctrl_c_checkpoints_and_exits_with_one_line(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out, whole = tmp_path / "cut", tmp_path / "whole"
    # long enough (~13 s) that the signal lands mid-run even on a loaded machine
    args = [sys.executable, "-m", "rabo.cli", "run", "quadratic", "--rounds", "300",
            "--checkpoint-every", "5000", "--quiet"]
    proc = subprocess.Popen(args + ["--out", str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count(
                "\n") >= 5:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.startswith("rabo: interrupted after round ") and err.count("\n") == 1, err
    assert "by SIGINT" in err
    done = checkpoint.peek(out)["round"]
    assert 5 <= done < 300 and f"round {done} of 300" in err
    resumed = subprocess.run([sys.executable, "-m", "rabo.cli", "run", "--resume", str(out),
                              "--quiet"], env=env, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    subprocess.run(args + ["--out", str(whole)], env=env, check=True, capture_output=True)
    assert _metrics(out) == _metrics(whole)
    _same_final(out, whole)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_swallowed_by_a_destructor_still_stops_the_run(tmp_path):
    """Python ignores a KeyboardInterrupt raised inside __del__ (it prints "Exception
    ignored"); the run loop records the signal and stops after the round anyway, with a
    checkpoint of it. (A full-suite CI run once finished a Ctrl-C'd run with exit 0.)"""
    class SignalOnCollect:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)                 # the handler runs here, inside __del__

    exp = build(RunConfig(problem="quadratic", rounds=20))
    local = LocalTransport(exp, FlopCache())

    def transport(phase, round, jobs):
        if round == 2 and phase == "outer":
            SignalOnCollect()                # collected at once: its __del__ runs now
        return local(phase, round, jobs)

    with pytest.raises(KeyboardInterrupt):
        run(exp, tmp_path, progress=False, transport=transport)
    assert checkpoint.peek(tmp_path)["round"] == 3


QUAD = ["run", "quadratic", "--rounds", "6", "--checkpoint-every", "100", "--set", "eval_every=1",
        "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    assert main(QUAD + ["--out", str(out)]) == 0
    return out


def _signalled(out: Path, pause: str, *signums: int) -> tuple[int, str]:
    """Run QUAD in a subprocess paused at ``pause`` (see rabo.rounds.pause_for_tests), send
    ``signums`` there back to back, and return its exit code and stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1", RABO_TEST_PAUSE=pause)
    proc = subprocess.Popen([sys.executable, "-m", "rabo.cli", *QUAD, "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    assert line.startswith("rabo-test-pause"), line + proc.stderr.read()
    for signum in signums:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.parametrize("pause,signums,done", [
    ("evaluate:3", [signal.SIGTERM], 2),                 # mid-run, inside an evaluation
    ("evaluate:3", [signal.SIGHUP], 2),
    ("evaluate:6", [signal.SIGINT], 5),                  # the final evaluation
    ("checkpoint:6", [signal.SIGINT, signal.SIGINT], 6),  # twice, during the checkpoint write
], ids=["sigterm", "sighup", "sigint-final-evaluation", "double-sigint-checkpoint"])
def test_a_signal_leaves_a_resumable_run_equal_to_an_uninterrupted_one(
        pause, signums, done, uninterrupted, tmp_path):
    out = tmp_path / "cut"
    code, err = _signalled(out, pause, *signums)
    name = signal.Signals(signums[0]).name
    assert code == 128 + signums[0], err
    assert err == (f"rabo: interrupted after round {done} of 6 by {name}; continue with "
                   f"'rabo run --resume {out}'\n")
    # the invariant: the checkpoint's round is the last metrics line
    assert checkpoint.peek(out)["round"] == done and len(_metrics(out)) == done
    assert not (out / "final.safetensors").exists()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert _metrics(out) == _metrics(uninterrupted)
    _same_final(out, uninterrupted)


def test_sigint_during_the_final_save_finishes_the_run(uninterrupted, tmp_path):
    out = tmp_path / "cut"
    code, err = _signalled(out, "final:6", signal.SIGINT)
    assert code == 0 and err == "", err
    assert _metrics(out) == _metrics(uninterrupted)
    _same_final(out, uninterrupted)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_rewrites_a_lost_final_save(damage, uninterrupted, tmp_path):
    """A run killed between its last checkpoint and final.safetensors is finished by
    --resume (it answered "already finished" before and could never be completed)."""
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    final = out / "final.safetensors"
    if damage == "missing":
        final.unlink()
    else:
        final.write_bytes(final.read_bytes()[:-20])
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    _same_final(out, uninterrupted)
    assert main(["run", "--resume", str(out), "--quiet"]) == 2     # now finished


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it(uninterrupted,
                                                                      tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(uninterrupted / "config.json", out / "config.json")
    (out / "metrics.jsonl").write_text('{"round": 1, "inner_lo')
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert _metrics(out) == _metrics(uninterrupted)


@pytest.fixture
def stopped(uninterrupted, tmp_path):
    """A copy of the uninterrupted run as if stopped after round 4: its checkpoint (re-made
    by replaying four rounds) and four metrics lines, no final.safetensors."""
    out = tmp_path / "stopped"
    shutil.copytree(uninterrupted, out)
    (out / "final.safetensors").unlink()
    config = json.loads((out / "config.json").read_text())
    exp = build(RunConfig(**config))
    state = RunState(*exp.problem.init_params(0))
    for _ in range(4):
        simulate_round(exp, state, FlopCache())
    checkpoint.save(out, state.x, state.y, 4, config)
    rows = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(rows[:4]))
    return out


def _reseal(out: Path, change) -> None:
    """Rewrite the checkpoint with ``change(tensors, meta)`` applied and a valid seal: what
    the checks behind the checksum must catch on their own."""
    path = out / checkpoint.FILE
    tensors, meta = checkpoint.read_tensors(path)
    change(tensors, meta)
    checkpoint.write_tensors(path, tensors, {k: v for k, v in meta.items() if k != "sha256"})


def _set(meta, key, value):
    meta[key] = value


CORRUPTIONS = {
    "flipped-byte": (lambda out: _flip(out / checkpoint.FILE, -3), "fails its checksum"),
    "flipped-round-digit": (lambda out: _flip(out / checkpoint.FILE, (
        out / checkpoint.FILE).read_bytes().index(b'"round":"') + 9), "fails its checksum"),
    "flipped-header-brace": (lambda out: _flip(out / checkpoint.FILE, 8),
                             "is corrupt or not written by rabo"),
    "wrong-shape": (lambda out: _reseal(out, lambda t, m: t.update({"y.y": t["y.y"][:3]})),
                    "y.y is torch.float64 [3], this problem's is torch.float64 [16]"),
    "wrong-dtype": (lambda out: _reseal(out, lambda t, m: t.update({"x.x": t["x.x"].float()})),
                    "x.x is torch.float32"),
    "short-rng": (lambda out: _reseal(out, lambda t, m: t.update(
        {"rng.torch": t["rng.torch"][:100]})), "unusable RNG states"),
    "garbage-rng": (lambda out: _reseal(out, lambda t, m: _set(m, "rng", '{"numpy": 3}')),
                    "unusable RNG states"),
    "negative-round": (lambda out: _reseal(out, lambda t, m: _set(m, "round", "-1")),
                       "(round -1)"),
    "edited-config": (lambda out: _edit_config(out, capacities=None),
                      "was edited after its checkpoint was written (differs in capacities)"),
    "non-utf8-config": (lambda out: (out / "config.json").write_bytes(b'{"seed": "\xff"}'),
                        "config.json is corrupt"),
    "metrics-line-corrupt": (lambda out: _edit_metrics(out, 1, '{"round": 2, "inner'),
                             "line 2 of metrics.jsonl (round 2) is corrupt"),
    "metrics-missing": (lambda out: (out / "metrics.jsonl").unlink(),
                        "line 1 of metrics.jsonl (round 1) is missing"),
}


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_config(out: Path, **values) -> None:
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | values))


def _edit_metrics(out: Path, index: int, line: str) -> None:
    rows = (out / "metrics.jsonl").read_text().splitlines()
    rows[index] = line
    (out / "metrics.jsonl").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("corrupt,needle", CORRUPTIONS.values(), ids=list(CORRUPTIONS))
def test_a_damaged_run_directory_is_refused_in_one_line(corrupt, needle, stopped, capsys):
    """Whatever resume cannot trust or repair is refused with exit 2 and one line, and the
    files stay as they were."""
    corrupt(stopped)
    before = {p: p.read_bytes() for p in stopped.rglob("*") if p.is_file()}
    assert main(["run", "--resume", str(stopped), "--quiet"]) == 2
    _one_line_error(capsys, needle)
    assert {p: p.read_bytes() for p in stopped.rglob("*") if p.is_file()} == before


def test_the_stopped_fixture_resumes_to_the_uninterrupted_run(stopped, uninterrupted):
    assert main(["run", "--resume", str(stopped), "--quiet"]) == 0
    assert _metrics(stopped) == _metrics(uninterrupted)
    _same_final(stopped, uninterrupted)


def test_a_flipped_byte_is_refused_by_the_command(stopped):
    _flip(stopped / checkpoint.FILE, -3)
    done = subprocess.run([sys.executable, "-m", "rabo.cli", "run", "--resume", str(stopped)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("rabo: error: ") and done.stderr.count("\n") == 1
    assert "fails its checksum" in done.stderr


def test_a_run_directory_in_use_is_refused(stopped, capsys):
    with rundir.locked(stopped):
        assert main(["run", "--resume", str(stopped), "--quiet"]) == 2
    _one_line_error(capsys, f"is in use by another rabo process (pid {os.getpid()})")
    assert main(["run", "--resume", str(stopped), "--quiet"]) == 0


@pytest.mark.parametrize("argv,needle", [
    (["--resume", ""], "--resume '' names no run directory"),
    (["--resume", "{run}", "--out", "{other}"], "continues in its own directory"),
    (["--resume", "{run}", "--overwrite"], "--overwrite with --resume"),
], ids=["resume-empty", "resume-with-out", "resume-with-overwrite"])
def test_contradictory_resume_flags_are_refused(argv, needle, stopped, tmp_path, capsys):
    argv = [a.format(run=stopped, other=tmp_path / "other") for a in argv]
    assert main(["run", *argv, "--quiet"]) == 2
    _one_line_error(capsys, needle)
    assert not (tmp_path / "other").exists()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_ctrl_c_while_the_command_imports_is_one_line(tmp_path):
    """Ctrl-C in the first second or two (torch importing) printed a traceback. The signal
    goes once torch's library is mapped, i.e. while torch imports."""
    proc = subprocess.Popen([sys.executable, "-m", "rabo", "run", "quadratic", "--rounds", "2",
                             "--out", str(tmp_path / "r")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.time() + 60
    while time.time() < deadline and "libtorch" not in maps.read_text():
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.startswith("rabo: interrupted") and err.count("\n") == 1, err


@pytest.mark.parametrize("values,needle", [
    ({"seed": "0"}, "seed='0' is not of type int"),
    ({"capacities": None}, "capacities=None is not of type list"),
    ({"problem_options": []}, "problem_options=[] is not of type dict"),
    ({"problem_options": {"dim": "16"}}, "problem.dim='16' is not of type int"),
    ({"rounds": -3}, "rounds=-3 is not allowed"),
    ({"colour": "red"}, "unknown key of config.json"),
], ids=["seed-string", "capacities-null", "options-list", "option-string", "rounds-negative",
        "unknown-key"])
def test_an_edited_config_json_without_checkpoint_is_one_line(values, needle, uninterrupted,
                                                              tmp_path, capsys):
    """A run stopped before its first checkpoint has only config.json to go by; edits that
    broke it were tracebacks."""
    out = tmp_path / "run"
    out.mkdir()
    config = json.loads((uninterrupted / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | values))
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    _one_line_error(capsys, needle)
