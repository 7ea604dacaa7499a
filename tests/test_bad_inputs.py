"""The bad-input catalogue: every case ends with a one-line error naming the bad value and
what is allowed, exit code 2, no traceback, and nothing lost (no run directory created)."""

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import rabo
import rabo.checkpoint
import rabo.models
from rabo.cli import main
from rabo.config import RunConfig
from rabo.data import load_dataset, readers
from rabo.data.cifar import parse_cifar_pickle
from rabo.errors import RaboError
from rabo.experiment import build
from rabo.submodel import width

OMNIGLOT = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot")


def _files(tmp: Path) -> dict[str, str]:
    """Bad files the cases point at, written fresh into the test's tmp dir."""
    (tmp / "empty").mkdir()
    (tmp / "corrupt").mkdir()
    (tmp / "corrupt" / "images_background_small1.zip").write_bytes(b"not a zip at all")
    (tmp / "idx").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(tmp / "idx" / f"{name}.gz", "wb") as fh:
            fh.write(b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00\x00\x1c\x00\x00\x00\x1c" + b"\0")
    (tmp / "bad.toml").write_text("rounds = = 3\n")
    (tmp / "types.toml").write_text('rounds = "many"\n')
    (tmp / "missing.csv").write_text("round,client,capacity\n1,0,1.0\n")
    (tmp / "row.csv").write_text("round,client,capacity\n1,0,1.0\n1,1,lots\n")
    (tmp / "latin1.csv").write_bytes("round,client,capacity\n1,0,é\n".encode("latin-1"))
    (tmp / "binary.csv").write_bytes(bytes(range(256)))
    (tmp / "deep.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp / "bool.toml").write_text("capacities = [true, 0.5]\n")
    return {k: str(tmp / v) for k, v in {
        "empty": "empty", "corrupt": "corrupt", "idx": "idx", "bad_toml": "bad.toml",
        "types_toml": "types.toml", "missing_csv": "missing.csv", "row_csv": "row.csv",
        "latin1_csv": "latin1.csv", "binary_csv": "binary.csv", "deep_toml": "deep.toml",
        "bool_toml": "bool.toml"}.items()}


CLI = [
    # unknown names
    (["--method", "nope"], "unknown method 'nope'"),
    (["unknown-problem"], "unknown problem 'unknown-problem'"),
    (["--set", "estimator=magic"], "unknown estimator 'magic'"),
    (["--set", "policy=magic"], "unknown policy 'magic'"),
    (["--set", "problem.model=vgg"], "unknown model 'vgg'"),
    (["--set", "problem.model=conv4"], "model 'conv4' is not a classifier for loss tuning"),
    (["--set", "problem.dataset=cifar"], "unknown dataset 'cifar'"),
    (["fewshot", "--set", "problem.backbone=vit"], "unknown backbone 'vit'"),
    (["fewshot", "--set", "problem.source=web"], "unknown episode source 'web'"),
    (["--set", "problem.partition=zipf"], "zipf"),
    (["--set", "policy=segments"], "needs option 'segments'"),
    (["--set", "policy=coverage", "--set", "policy.rotat=1"], "'rotat'"),
    # capacities
    (["--capacities", "0"], "capacity 0.0 is outside (0, 1]"),
    (["--capacities", "-0.5"], "capacity -0.5 is outside (0, 1]"),
    (["--capacities", "1.5"], "capacity 1.5 is outside (0, 1]"),
    (["--capacities", "nan"], "capacity nan is outside (0, 1]"),
    (["--capacities", ","], "capacities is empty"),
    (["--capacities", "1,half"], "capacities='1,half' is not of type list"),
    (["--clients", "2", "--capacities", "1,0.5,0.25"], "3 capacities for 2 clients"),
    # counts, steps and rates
    (["--rounds", "0"], "rounds=0"),
    (["--rounds", "-3"], "rounds=-3"),
    (["--clients", "0"], "clients=0"),
    (["--set", "inner_steps=0"], "inner_steps=0"),
    (["--set", "outer_steps=-1"], "outer_steps=-1"),
    (["--set", "terms=0"], "terms=0"),
    (["--set", "eval_every=0"], "eval_every=0"),
    (["--set", "inner_lr=0"], "inner_lr=0.0"),
    (["--set", "outer_lr=-1"], "outer_lr=-1.0"),
    (["--set", "outer_lr=nan"], "outer_lr=nan"),
    (["--set", "mu=inf"], "mu=inf"),
    (["--participation", "0"], "participation=0.0 is outside (0, 1]"),
    (["--fail-prob", "1"], "fail_prob=1.0 is outside [0, 1)"),
    (["--seed", "-1"], "seed=-1"),
    # few-shot episodes
    (["fewshot", "--set", "problem.shots=20", "--set", "problem.source=synthetic"],
     "shots=20 must be in 1..19"),
    (["fewshot", "--data-dir", OMNIGLOT, "--clients", "40", "--set", "problem.ways=20"],
     "fewer than ways N=20"),
    (["fewshot", "--data-dir", OMNIGLOT, "--set", "problem.train_alphabets=Klingon"],
     "unknown alphabet"),
    # data
    (["fewshot"], "fewshot on Omniglot needs --data-dir"),
    (["fewshot", "--data-dir", "/nonexistent/omniglot"], "does not exist"),
    (["fewshot", "--data-dir", "{empty}"], "no Omniglot data in"),
    (["fewshot", "--data-dir", "{corrupt}"], "cannot read Omniglot zip"),
    (["--set", "problem.dataset=fashion-mnist"], "--data-dir is required"),
    (["--set", "problem.dataset=fashion-mnist", "--data-dir", "/nonexistent"],
     "does not exist"),
    (["--set", "problem.dataset=mnist", "--data-dir", "{empty}"], "no MNIST in"),
    (["--set", "problem.dataset=mnist", "--data-dir", "{idx}"], "truncated"),
    (["--set", "problem.dataset=mnist", "--data-dir", "{bad_toml}"], "is not a directory"),
    # config sources
    (["--config", "/nonexistent/c.toml"], "does not exist"),
    (["--config", "{bad_toml}"], "cannot read config file"),
    (["--config", "{types_toml}"], "rounds='many' is not of type int"),
    (["--set", "no_such_key=1"], "unknown config key 'no_such_key'"),
    (["--set", "problem.no_such=1"], "'no_such'"),
    (["--set", "problem.rho=steep"], "problem.rho='steep' is not of type float"),
    (["--rounds", "ten"], "rounds='ten' is not of type int"),
    (["--set", "novalue"], "not of the form key=value"),
    (["--bogus-flag"], "unrecognized arguments"),
    # capacity traces
    (["--rounds", "1", "--clients", "2", "--capacity-trace", "{missing_csv}"],
     "no row for round 1 client 1"),
    (["--rounds", "1", "--clients", "2", "--capacity-trace", "{row_csv}"], "line 3"),
    (["--capacity-trace", "/nonexistent.csv"], "cannot read capacity trace"),
    (["--clients", "1", "--capacity-trace", "{latin1_csv}"], "is not UTF-8 text (byte 26)"),
    (["--clients", "1", "--capacity-trace", "{binary_csv}"], "is not UTF-8 text (byte 128)"),
    # bounds, checked before any work (these were tracebacks: overflow, MemoryError, ...)
    (["--threads", "99999999999"], "threads=99999999999 is not allowed; at most 4,096"),
    (["--clients", "10000000"], "clients=10000000 is not allowed; at most 100,000"),
    (["quadratic", "--clients", "100000", "--set", "problem.dim=100"],
     "needs 15 GiB for the clients' matrices"),
    (["quadratic", "--set", "problem.dim=100000000"],
     "problem.dim=100000000 is not allowed; it must be ≥ 1 and ≤ 100000"),
    (["quadratic", "--set", "problem.heterogeneity=-1"], "problem.heterogeneity=-1.0"),
    (["quadratic", "--set", "problem.heterogeneity=nan"], "problem.heterogeneity=nan"),
    (["--set", "problem.hidden=0"], "problem.hidden=0 is not allowed"),
    (["fewshot", "--set", "problem.source=synthetic", "--set", "problem.image_size=0"],
     "problem.image_size=0 is not allowed; it must be ≥ 16 and ≤ 256"),
    (["fewshot", "--set", "problem.source=synthetic", "--set", "problem.final_episodes=0"],
     "problem.final_episodes=0 is not allowed"),
    (["fewshot", "--set", "problem.source=synthetic", "--set", "problem.eval_steps=-7"],
     "problem.eval_steps=-7 is not allowed"),
    (["fewshot", "--set", "problem.source=synthetic", "--set", "problem.eval_lr=-1"],
     "problem.eval_lr=-1.0 is not allowed; it must be > 0"),
    # nesting and sizes a file or flag can state
    (["--set", "policy.x=" + "[" * 5000 + "]" * 5000], "policy.x: a JSON value nested too deeply"),
    (["--config", "{deep_toml}"], "nested too deeply"),
    (["--config", "/dev/zero"], "config file '/dev/zero' is not a regular file"),
    (["--config", "{bool_toml}"], "capacity True is not a number"),
]


@pytest.mark.parametrize("argv,needle", CLI, ids=[c[1][:40] for c in CLI])
def test_cli_bad_input(argv, needle, tmp_path, capsys):
    if OMNIGLOT in argv and not Path(OMNIGLOT).exists():
        pytest.skip(f"needs the Omniglot subset in {OMNIGLOT}")
    files = _files(tmp_path)
    argv = [a.format(**files) for a in argv]
    out = tmp_path / "run"
    assert main(["run", *argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert err.startswith("rabo: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


API = [
    (lambda: rabo.hypergradient(object(), {}, {}, None, "magic"), "unknown estimator 'magic'"),
    (lambda: rabo.hypergradient(object(), {}, {}, None, terms=0), "terms=0"),
    (lambda: build(RunConfig(problem="quadratic", capacities=[2.0])), "capacity 2.0"),
    (lambda: build(RunConfig(problem="quadratic", method="sgd")), "unknown method 'sgd'"),
    (lambda: build(RunConfig(problem="quadratic", problem_options={"coupling": "ring"})),
     "coupling 'ring'"),
    (lambda: load_dataset("svhn", "/tmp"), "unknown dataset 'svhn'"),
    (lambda: width(8, 0.0), "capacity 0.0 is outside (0, 1]"),
    (lambda: rabo.models.build_model("vgg"), "unknown model 'vgg'"),
]


@pytest.mark.parametrize("call,needle", API, ids=[c[1][:40] for c in API])
def test_api_bad_input(call, needle):
    with pytest.raises(RaboError) as info:
        call()
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_a_capacity_trace_with_a_byte_order_mark_is_read(tmp_path):
    """A UTF-8 BOM was blamed on "line 1"."""
    trace = tmp_path / "bom.csv"
    trace.write_bytes("\ufeffround,client,capacity\n1,0,1.0\n1,1,0.5\n".encode())
    out = tmp_path / "run"
    assert main(["run", "quadratic", "--rounds", "1", "--clients", "2", "--capacity-trace",
                 str(trace), "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "metrics.jsonl").read_text())["capacities"] == [1.0, 0.5]


def test_cost_json_into_a_missing_folder_is_refused_before_the_work(tmp_path, capsys):
    target = tmp_path / "missing" / "cost.json"
    assert main(["cost", "quadratic", "--methods", "rabo", "--json", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "its folder does not exist" in captured.err
    assert captured.err.count("\n") == 1


def _mnist(tmp: Path, images: bytes, labels: bytes) -> str:
    """An MNIST directory whose training and test files hold these (gzipped) bytes."""
    for split in ("train", "t10k"):
        for kind, data in (("images-idx3", images), ("labels-idx1", labels)):
            with gzip.open(tmp / f"{split}-{kind}-ubyte.gz", "wb") as fh:
                fh.write(data)
    return str(tmp)


def _cifar_pickle(pixels) -> bytes:
    return pickle.dumps({b"data": pixels, b"labels": []})


READERS = {
    # IDX files of 0 items: a traceback further on
    "idx-no-items": (lambda tmp: load_dataset("mnist", _mnist(
        tmp, b"\0\0\x08\x03" + (0).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2,
        b"\0\0\x08\x01" + (0).to_bytes(4, "big"))), "holds no images"),
    # a CIFAR batch of shape (0, 3072)
    "cifar-no-items": (lambda tmp: parse_cifar_pickle(
        _cifar_pickle(np.zeros((0, 3072), np.uint8)), "data_batch_1"), "holds no images"),
    # a gzip bomb: refused after MAX_FILE_BYTES (lowered here), not inflated whole
    "gzip-bomb": (lambda tmp: load_dataset("mnist", _mnist(tmp, bytes(5000), bytes(5000))),
                  "decompresses to more than 4,096 bytes"),
    "gzip-truncated": (lambda tmp: (_mnist(tmp, bytes(100), bytes(100)), (
        tmp / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(100))[:-12]),
        load_dataset("mnist", str(tmp))), "compressed file ended"),
}


@pytest.mark.parametrize("call,needle", READERS.values(), ids=list(READERS))
def test_reader_bad_input(call, needle, tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_FILE_BYTES", 4096)
    with pytest.raises(RaboError) as info:
        call(tmp_path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_refused_reproduction_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "fig6"
    assert main(["reproduce", "fig6", "--dataset", "svhn", "--out", str(out), "--quiet"]) == 2
    assert "unknown dataset 'svhn'" in capsys.readouterr().err
    assert not out.exists()


def test_catalogue_has_at_least_forty_cases():
    assert len(CLI) + len(API) >= 40


def test_json_of_a_checkpointed_run_is_untouched_by_a_refused_resume(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "quadratic", "--rounds", "2", "--out", str(out), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["run", "quadratic", "--resume", str(out), "--rounds", "3"]) == 2
    assert "differs in rounds" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert json.loads((out / "config.json").read_text())["rounds"] == 2


def _quad(out: str, *extra: str) -> list[str]:
    return ["run", "quadratic", "--rounds", "1", "--out", out, "--quiet", *extra]


@pytest.mark.parametrize("where,needle", [
    (".", "it is the current directory or holds it"),
    ("..", "it is the current directory or holds it"),
    ("/", "it is the current directory or holds it"),
], ids=["dot", "parent", "root"])
def test_overwrite_of_the_current_directory_is_refused(where, needle, tmp_path, monkeypatch,
                                                      capsys):
    """`cd D && rabo run --out . --overwrite` deleted every file in D."""
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path / "d")
    (tmp_path / "d" / "notes.txt").write_text("mine")
    assert main(_quad(where, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"


def test_overwrite_keeps_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(_quad(str(tmp_path), "--overwrite")) == 2
    assert "holds files rabo did not write (notes.txt)" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_keeps_a_foreign_config_json(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"problem": "mine"}')
    assert main(_quad(str(tmp_path), "--overwrite")) == 2
    assert "not a rabo run directory" in capsys.readouterr().err
    assert (tmp_path / "config.json").read_text() == '{"problem": "mine"}'


def test_overwrite_keeps_a_user_file_inside_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_quad(str(out))) == 0
    (out / "checkpoint" / "mine.txt").write_text("mine")
    before = sorted(p.name for p in out.rglob("*"))
    assert main(_quad(str(out), "--overwrite")) == 2
    assert "(checkpoint/mine.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before


def test_overwrite_replaces_a_run_and_only_its_files(tmp_path):
    out = tmp_path / "run"
    assert main(_quad(str(out), "--seed", "3")) == 0
    assert main(_quad(str(out), "--overwrite")) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 0
    assert sorted(p.name for p in out.rglob("*")) == [
        "checkpoint", "config.json", "final.safetensors", "metrics.jsonl", "rabo.lock",
        "state.safetensors"]


@pytest.mark.parametrize("target", ["file", "/dev/null"])
def test_out_that_is_not_a_directory_is_refused(target, tmp_path, capsys):
    path = tmp_path / "file" if target == "file" else Path(target)
    if target == "file":
        path.write_text("mine")
    assert main(_quad(str(path), "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and err.count("\n") == 1, err
    assert target != "file" or path.read_text() == "mine"


def test_out_that_cannot_be_created_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    assert main(_quad(str(tmp_path / "file" / "run"))) == 2
    err = capsys.readouterr().err
    assert "cannot write run directory" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("errno_, text", [(28, "No space left on device"),
                                          (30, "Read-only file system")])
def test_a_disk_that_fills_up_or_turns_read_only_mid_run_is_one_line(tmp_path, capsys,
                                                                      monkeypatch, errno_, text):
    """A write that fails after the run started (here: the first checkpoint) ends in one line
    and exit 2, the files written before it kept."""
    def refuse(*args, **kwargs):
        raise OSError(errno_, text)

    monkeypatch.setattr(rabo.checkpoint, "save", refuse)
    assert main(_quad(str(tmp_path / "run"))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rabo: error: {text};") and err.count("\n") == 1, err
    assert (tmp_path / "run" / "config.json").exists()
