"""The training step (utils/step.py, utils/engine.py) on the CPU: it dispatches no gradient accumulation it does not
need and computes the same numbers as with gradients zeroed in place; its autocast keeps no stale weight copies; a
captured step notices tensors replaced behind its back; a failed capture keeps its whole cause, records it, leaves
the saved state intact, and the run continues eagerly with --resume --no-cuda_graph. The CUDA side of the same step
is in tests/test_cuda.py; the smoke check of a GPU window (tests/gpu_smoke.py) runs here on the CPU."""
import argparse
import contextlib
import copy
import json
import signal
import subprocess
import sys

import pytest
import torch

import utils.step
from models import build_model
from tests.benchmark import count_dispatched_ops
from tests.conftest import ROOT, RUN_DIR, outputs, script_env, train
from tests.test_resume import start, wait_for
from utils import RunError
from utils.engine import make_optimizer, train_step
from utils.step import CaptureFailed, TrainStep

def pair(arch="small_cnn", n_class=10):
    torch.manual_seed(0)
    nets = [build_model(arch, n_class).to(memory_format=torch.channels_last) for _ in range(2)]
    return nets, make_optimizer(nets, argparse.Namespace(lr=0.05, momentum=0.9, weight_decay=5e-4), torch.device("cpu"))


def batch(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last),
            torch.randint(0, 10, (b,), generator=g), torch.rand(b, generator=g))


@pytest.mark.slow
def test_eager_step_hands_gradients_over_instead_of_adding_them_to_zeros():
    """With gradients set to None backward stores each fresh gradient: one add_ kernel per parameter fewer than
    with gradients zeroed in place (what a captured step needs), and not a bit of difference in the result."""
    nets, optimizer = pair()
    x, y, alphas = batch(2)
    for _ in range(2):  # momentum buffers exist, as in every later step
        train_step(*nets, optimizer, x, y, alphas, "fp32")
    n_params = sum(1 for net in nets for _ in net.parameters())
    none = count_dispatched_ops(lambda: train_step(*nets, optimizer, x, y, alphas, "fp32"))
    in_place = count_dispatched_ops(lambda: train_step(*nets, optimizer, x, y, alphas, "fp32", keep_grad_tensors=True))
    assert in_place["aten::add_"] - none["aten::add_"] == n_params
    assert "aten::_foreach_zero_" in in_place and "aten::_foreach_zero_" not in none
    assert sum(none.values()) <= sum(in_place.values()) - n_params - 1
    results = []
    for keep in (False, True):  # the same steps both ways, from the same start
        nets, optimizer = pair()
        outs = [train_step(*nets, optimizer, *batch(8, seed), "fp32", keep_grad_tensors=keep) for seed in range(4)]
        results.append((outs, [p.detach().clone() for net in nets for p in net.parameters()]))
    (outs_a, params_a), (outs_b, params_b) = results
    assert all(torch.equal(u, v) for a, b in zip(outs_a, outs_b) for u, v in zip(a, b))
    assert all(torch.equal(u, v) for u, v in zip(params_a, params_b))


def test_step_inside_an_outer_autocast_uses_the_updated_weights():
    """Autocast's weight-cast cache lives until the outermost autocast region closes: a step run inside an outer
    region (as a captured step would be) must not reuse the bf16 weights cast before the previous update."""
    results = []
    for outer in (contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16)):
        nets, optimizer = pair()
        with outer:
            outs = [train_step(*nets, optimizer, *batch(8, seed), "bf16") for seed in range(3)]
        results.append(outs)
    plain, nested = results
    for a, b in zip(plain, nested):
        for u, v in zip(a, b):
            assert torch.equal(u, v)


def test_check_graph_targets_stops_when_a_tensor_the_graph_updates_was_replaced():
    nets, optimizer = pair()
    step = TrainStep(*nets, optimizer, "fp32", batch_size=8)
    for seed in range(2):
        step(*batch(8, seed))
    step.check_graph_targets()  # nothing captured: nothing to check
    step.graph, step.graph_targets = "captured", step.graph_tensors()  # what a capture records
    step.check_graph_targets()
    for net in nets:  # loading weights copies them into the same tensors: still the graph's
        net.load_state_dict({k: v.clone() for k, v in net.state_dict().items()})
    step.check_graph_targets()
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # new momentum tensors: the graph's are orphans
    with pytest.raises(RunError, match="no longer updates the networks' and the optimizer's own tensors.*"
                                       "--resume --no-cuda_graph"):
        step.check_graph_targets()
    step.graph_targets = step.graph_tensors()
    nets[0].linear.weight.grad = None  # a zero_grad(set_to_none=True) from outside
    with pytest.raises(RunError):
        step.check_graph_targets()


class FailingCapture:
    """Stands in for torch.cuda.graph on a CPU, failing as a real capture does: an op inside raises (it cannot be
    captured), and the context's exit then raises a second error on top of it."""
    capturing = False

    def __init__(self, graph, stream=None):
        pass

    def __enter__(self):
        FailingCapture.capturing = True

    def __exit__(self, *exc):
        FailingCapture.capturing = False
        raise RuntimeError("CUDA error: operation failed due to a previous error during capture")


@pytest.fixture
def failing_capture(monkeypatch):
    """The CUDA graph machinery of utils.step replaced so that a capture fails on a CPU: the step believes it can
    capture, runs its warm-up steps eagerly, then fails in the capture as a GPU would."""
    real_step = utils.step.train_step

    def train_step_that_cannot_be_captured(*args, **kwargs):
        if FailingCapture.capturing:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing (the op that broke it)")
        return real_step(*args, **kwargs)
    monkeypatch.setattr(utils.step, "train_step", train_step_that_cannot_be_captured)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: None)
    monkeypatch.setattr(torch.cuda, "graph", FailingCapture)
    monkeypatch.setattr(TrainStep, "on_side_stream", lambda self, fn: fn())


def test_failed_capture_keeps_its_whole_cause(failing_capture):
    nets, optimizer = pair()
    reported = []
    step = TrainStep(*nets, optimizer, "fp32", batch_size=8, cuda_graph=True, warmup=2,
                     on_capture_failure=reported.append)
    for seed in range(2):
        step(*batch(8, seed))  # the warm-up, eager
    with pytest.raises(CaptureFailed) as e:
        step(*batch(8, 2))
    assert reported == [e.value] and "--resume --no-cuda_graph" in str(e.value) and "\n" not in str(e.value)
    cause = e.value.cause
    assert cause.index("operation not permitted when stream is capturing (the op that broke it)") < cause.index(
        "During handling of the above exception, another exception occurred") < cause.index(
        "operation failed due to a previous error during capture")
    assert "train_step_that_cannot_be_captured" in cause  # the frames, not just the messages


def test_failed_capture_stops_the_run_with_its_cause_and_the_run_continues_eagerly(reference, tmp_path,
                                                                                    failing_capture, monkeypatch, capsys):
    """An eager run killed after its first epochs; resumed with --cuda_graph, its capture fails: the whole traceback
    on stderr, the failure in metrics.json, the saved state untouched, one last line saying how to continue; and
    --resume --no-cuda_graph then ends byte for byte as a run that was never interrupted."""
    import blind_knowledge_dist_training as training
    from flags import check_args, get_args_parser
    from utils.cli import run_main
    flags, tmp = reference["flags"], tmp_path  # the reference run of tests/test_resume.py, never interrupted
    run_dir = tmp / "r" / RUN_DIR
    process = start(flags, tmp / "r", "--no-cuda_graph")
    wait_for(run_dir / "state.pth.tar", process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    saved = (run_dir / "state.pth.tar").read_bytes()
    epochs_done = torch.load(run_dir / "state.pth.tar", weights_only=True)["epoch"] + 1

    monkeypatch.setattr(training, "graph_capturable", lambda device, world_size: True)  # as on one GPU
    monkeypatch.setattr(training.signal, "signal", lambda *args: None)  # keep pytest's own Ctrl-C handler
    monkeypatch.setattr(sys, "argv", ["blind_knowledge_dist_training.py", *map(str, flags), "--results_dir",
                                      str(tmp / "r"), "--resume", "--cuda_graph", "--device", "cpu"])
    with pytest.raises(SystemExit) as e:
        run_main(training.main, get_args_parser(""), check_args)
    err = capsys.readouterr().err
    assert e.value.code == 1
    assert err.index("operation not permitted when stream is capturing") < err.index(
        "operation failed due to a previous error during capture")
    last = err.strip().splitlines()[-1]
    assert last.startswith("blind_knowledge_dist_training.py: error: capturing the training step as a CUDA graph failed") and (
        "--resume --no-cuda_graph" in last)
    assert (run_dir / "state.pth.tar").read_bytes() == saved  # the last completed epoch, intact
    failure = json.loads((run_dir / "metrics.json").read_text())["capture_failure"]
    assert failure["epoch"] == epochs_done and failure["iteration"] == 4  # after 3 eager warm-up steps
    assert "operation not permitted when stream is capturing" in failure["traceback"]

    resumed = train(flags, tmp / "r", "--resume", "--no-cuda_graph")
    assert "resuming from" in resumed.stdout
    assert outputs(run_dir) == reference["outputs"]
    assert json.loads((run_dir / "metrics.json").read_text())["capture_failure"] == failure  # still on record


@pytest.mark.slow
def test_gpu_smoke_script_runs_on_the_cpu():
    """tests/gpu_smoke.py is the first thing a GPU window runs: it must work before one is spent on it. On a CPU it
    compares the eager step with one that keeps its gradient tensors, which must agree exactly."""
    result = subprocess.run([sys.executable, "tests/gpu_smoke.py", "--device", "cpu", "--precision", "fp32",
                             "--arch", "small_cnn", "--batch_size", "8", "--timing_steps", "2"],
                            cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    table = lines[lines.index(next(l for l in lines if l.startswith("| quantity"))):]
    assert table[-1].startswith("| fp32: ms per step, grads in place")  # the table comes last
    for quantity in ("parameters", "gradients", "momentum", "BatchNorm statistics", "parameter updates", "loss",
                     "agreement on the label", "confidence sum"):
        row = next(l for l in table if l.startswith(f"| fp32: {quantity} "))
        assert row.endswith("| ok |") and "| 0 (of values up to" in row, row


def test_a_cuda_device_always_has_its_index(monkeypatch):
    """`--device auto` and `--device cuda` name the current GPU by its index: torch.cuda.set_device (which
    tests/gpu_smoke.py and torchrun's setup call) refuses a CUDA device without one, as it did on the first GPU
    window. An index the machine does not have is one clear line. (CUDA faked: this runs on any machine.)"""
    from utils import InputError
    from utils.engine import get_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert get_device("auto") == torch.device("cuda", 1)
    assert get_device("cuda") == torch.device("cuda", 1)
    assert get_device("cuda:0") == torch.device("cuda", 0)
    assert get_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match=r"has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        get_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="CUDA is not available"):
        get_device("cuda")


@pytest.mark.parametrize("with_student", [True, False])
def test_an_empty_batch_steps_with_a_loss_of_zero(with_student):
    """A rank's empty share of a last batch (torchrun, fewer samples than ranks): a finite loss of 0, every parameter
    with a zero gradient (so a DDP step stays in lock-step), weight decay and momentum acting as on any step; the
    mean over no sample would be nan and stop the run as a non-finite loss."""
    (teacher, student), optimizer = pair()
    student = student if with_student else None
    before = [p.detach().clone() for p in teacher.parameters()]
    x, y, alphas = batch(0)
    loss, loss_ce, loss_c, agree, confidence = train_step(teacher, student, optimizer, x, y, alphas, "fp32")
    assert loss.item() == 0 and loss_ce.item() == 0 and loss_c.item() == 0 and confidence.item() == 0
    assert agree.shape == (0,)
    for net in (teacher, student) if with_student else (teacher,):
        assert all(p.grad is not None and not p.grad.any() for p in net.parameters())
    for p, b in zip(teacher.parameters(), before):  # no momentum yet: only weight decay moved them
        torch.testing.assert_close(p.detach(), b * (1 - 0.05 * 5e-4))
