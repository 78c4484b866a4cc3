"""tests/benchmark.py: a tiny CPU run as a user types it, a run whose training-script loop fails, and the count of
operations dispatched per step."""
import argparse
import os
import re
import subprocess
import sys

import pytest
import torch

from models import build_model
from tests.benchmark import count_dispatched_ops, is_view
from tests.conftest import ROOT, script_env
from utils.engine import make_optimizer
from utils.step import TrainStep

pytestmark = pytest.mark.slow  # starts scripts: not in the quick tier

TINY = ["--arch", "small_cnn", "--n_images", 512, "--steps", 3, "--warmup", 2, "--device", "cpu", "--no_baseline",
        "--batch_size", 64, "--eval_batch_size", 128]
NUMBER = r"[\d,]+(\.\d+)?"


def benchmark(*args):
    """python tests/benchmark.py <args> from the repository root, on the CPU, one thread: its timings mean nothing
    here, and one thread keeps it quick on a machine that is running other tests too."""
    return subprocess.run([sys.executable, os.path.join("tests", "benchmark.py"), *map(str, args)], cwd=ROOT,
                          env=script_env("1"), capture_output=True, text=True, timeout=600)


def table(stdout):
    """{measure: value} of the table, after checking that it is the last thing printed."""
    lines = stdout.rstrip("\n").splitlines()
    header = max(i for i, line in enumerate(lines) if line.startswith("| measure"))
    assert re.fullmatch(r"\|-+\|-+\|", lines[header + 1])
    rows = lines[header + 2:]
    assert rows and all(re.fullmatch(r"\| .+ \| .+ \|", row) for row in rows), stdout
    return {m.strip(): v.strip() for m, v in (row[2:-2].split(" | ", 1) for row in rows)}


def test_benchmark_tiny_cpu_run():
    """Every figure in a table printed last, exit code 0."""
    result = benchmark(*TINY, "--loop_epochs", 2)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(result.stdout)
    assert re.fullmatch(NUMBER + r" images/s \(" + NUMBER + r" ms/step\)", rows["training step, eager"]), rows
    assert re.fullmatch(NUMBER + " images/s", rows["full-set pass"]), rows
    assert int(rows["ops dispatched per step, eager"]) > 0
    assert re.fullmatch(NUMBER + r" s \(first epoch " + NUMBER + r" s\)",
                        rows["training script, eager: s per pre-split epoch"]), rows
    assert re.fullmatch(NUMBER + " min", rows["training script, eager: projected 300-epoch run"]), rows
    assert "FAILED" not in result.stdout and "Traceback" not in result.stderr
    line = re.search(r"^operations dispatched per step, eager: (\d+) \((.+)\)$", result.stdout, re.M)
    assert line and line[1] == rows["ops dispatched per step, eager"] and "conv2d" in line[2], result.stdout


def test_benchmark_failed_loop_keeps_the_other_figures():
    """A training script that exits with an error: its rows say FAILED with the script's error, the other figures
    are still in the table printed last, its stderr is shown, exit code 1."""
    result = benchmark(*TINY, "--loop_epochs", 1, "--script_args=--arch no_such_net")
    assert result.returncode == 1, result.stdout + result.stderr
    rows = table(result.stdout)
    assert re.fullmatch(NUMBER + r" images/s \(" + NUMBER + r" ms/step\)", rows["training step, eager"]), rows
    assert re.fullmatch(NUMBER + " images/s", rows["full-set pass"]), rows
    assert int(rows["ops dispatched per step, eager"]) > 0
    failed = rows["training script, eager: s per pre-split epoch"]
    assert failed.startswith("FAILED: ScriptFailed: the training script exited with code 2: ")
    assert "invalid choice: 'no_such_net'" in failed
    assert not any("projected" in measure for measure in rows)  # never computed from a failed loop
    assert "Traceback" in result.stderr and "ScriptFailed" in result.stderr
    assert "blind_knowledge_dist_training.py: error: argument --arch" in result.stderr  # the script's own stderr


@pytest.fixture
def one_thread():
    """Counts do not depend on threads; one keeps these steps quick on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_count_dispatched_ops_by_hand():
    """Views, no-op conversions and allocations count 0; an op's own sub-ops are not counted again."""
    x, w = torch.randn(3, 3), torch.randn(2, 3)

    def step():
        x.t(), x.detach(), x.view(9), x.unsqueeze(0).expand(2, 3, 3), torch.empty(3)  # no work
        x.to(torch.float32)  # already float32: returns x
        x + 1  # aten::add, which converts the scalar with aten::to inside
        x.to(torch.float64)  # aten::to, which copies with _to_copy and copy_ inside
        torch.nn.functional.linear(x, w)  # aten::linear, with t and matmul inside
    assert count_dispatched_ops(step) == {"aten::add": 1, "aten::to": 1, "aten::linear": 1}


def test_count_dispatched_ops_of_a_train_step(one_thread):
    """One eager step of a small-CNN pair: real aten op names, no views, the same count again and at another batch
    size."""
    torch.manual_seed(0)
    nets = [build_model("small_cnn", 10).to(memory_format=torch.channels_last) for _ in range(2)]
    optimizer = make_optimizer(nets, argparse.Namespace(lr=0.02, momentum=0.9, weight_decay=5e-4),
                               torch.device("cpu"))
    step = TrainStep(*nets, optimizer, "fp32", 4)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y, alphas = torch.tensor([0, 1, 2, 3]), torch.full((4,), 0.5)
    for _ in range(2):  # warm-up: SGD's momentum buffers
        step(x, y, alphas)
    ops = count_dispatched_ops(lambda: step(x, y, alphas))
    assert ops["aten::conv2d"] > 0 and ops["aten::convolution_backward"] == ops["aten::conv2d"]
    for name in ops:
        namespace, op = name.split("::")
        assert namespace == "aten" and hasattr(torch.ops.aten, op), name
    for view in ("aten::detach", "aten::t", "aten::view", "aten::expand", "aten::as_strided", "aten::empty"):
        assert view not in ops
    assert count_dispatched_ops(lambda: step(x, y, alphas)) == ops
    assert count_dispatched_ops(lambda: step(x[:2], y[:2], alphas[:2])) == ops


@pytest.mark.parametrize("name, view", [("aten::detach", True), ("aten::t", True), ("aten::slice", True),
                                        ("aten::empty_like", True), ("aten::to", True), ("aten::add_", False),
                                        ("aten::copy_", False), ("aten::record_stream", False)])
def test_is_view(name, view):
    """Views (slice too, despite its TorchScript overload returning a str), allocations and a to() that may return
    its input do no work by themselves."""
    assert is_view(name) == view
