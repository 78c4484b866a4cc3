"""The training step the script calls: utils.engine.train_step, eager, or on CUDA captured once as a CUDA graph.

A PreResNet18 pair at batch 128 is bound by launching hundreds of small kernels from Python, not by arithmetic.
A CUDA graph records the whole step (both forwards, both losses, backward, the SGD update, the per-sample
statistics) once and replays it with one launch; teacher and student run on two streams inside it.
"""
import contextlib
import traceback

import torch

from utils import RunError
from utils.engine import train_step


def no_recompilation():
    """torch.compile must not compile inside a capture (it would synchronise): with --compile the eager warm-up
    steps compiled everything the capture calls, and a recompilation becomes an error instead (torch >= 2.6)."""
    if hasattr(torch.compiler, "set_stance"):
        return torch.compiler.set_stance("fail_on_recompile")
    return contextlib.nullcontext()


def graph_capturable(device, world_size):
    """Whether the step can be captured: on one CUDA device (DDP steps stay eager)."""
    return device.type == "cuda" and world_size == 1


class CaptureFailed(RunError):
    """Capturing the step failed. `cause` is the whole traceback of what failed, chained exceptions included (the
    op that broke the capture comes first; torch.cuda.graph's own "failed due to a previous error" comes after)."""

    def __init__(self, cause):
        super().__init__("capturing the training step as a CUDA graph failed (the traceback above says why); the "
                         "state saved after the last completed epoch is intact: continue eagerly with the same "
                         "command and --resume --no-cuda_graph, and please report this")
        self.cause = cause


class TrainStep:
    """step(x, y, alphas) -> (loss, naive loss, compensation loss, agreement on the label (B,), confidence sum).

    Eager on CPU, under torchrun (DDP stays eager) and with cuda_graph=False. With cuda_graph=True on CUDA:
    - the first `warmup` steps run eagerly and are the run's own steps (cuDNN/cuBLAS initialise and autotune, SGD
      creates its momentum buffers), so capturing adds no step and changes no state;
    - the next full batch is captured (capturing runs nothing) and replayed, and so is every full batch after it:
      its images, labels and alphas are copied into the graph's input buffers first;
    - a batch of another size (the last of an epoch) runs eagerly, on the same parameter, gradient and momentum
      tensors the graph updates;
    - a new learning rate (the step decay) means a new capture, since the fused SGD kernel takes it as a constant.
    The returned tensors are the caller's: a replay writes into the graph's own output buffer, which is copied out
    (one small copy) before it is returned, so the next replay cannot change what a caller kept.
    A failed capture calls on_capture_failure(CaptureFailed) (to report it), then raises it.
    check_graph_targets() tells whether the graph still updates the networks' and the optimizer's own tensors."""

    def __init__(self, teacher, student, optimizer, precision, batch_size, cuda_graph=False, warmup=3,
                 on_capture_failure=None):
        self.nets, self.optimizer, self.precision = (teacher, student), optimizer, precision
        self.batch_size, self.cuda_graph, self.warmup = batch_size, cuda_graph, warmup
        self.on_capture_failure = on_capture_failure
        self.full_eager_steps, self.graph, self.graph_lr = 0, None, None
        if cuda_graph:  # work of the step goes to side streams, as capturing needs (never the legacy default stream)
            self.main_stream, self.student_stream = torch.cuda.Stream(), torch.cuda.Stream()

    def __call__(self, x, y, alphas):
        if not self.cuda_graph:
            return train_step(*self.nets, self.optimizer, x, y, alphas, self.precision)
        if self.graph is not None and self.graph_lr != self.learning_rates():
            self.graph = self.packed_outputs = None  # drops the old graph and its memory before the new capture
        full = len(y) == self.batch_size
        if full and self.graph is None and self.full_eager_steps >= self.warmup:
            self.capture(x, y, alphas)
        if full and self.graph is not None:
            for buffer, value in zip(self.inputs, (x, y, alphas)):
                buffer.copy_(value)
            self.graph.replay()
            out = self.packed_outputs.clone()
            return out[0], out[1], out[2], out[4:], out[3]
        self.full_eager_steps += full
        # the gradient tensors stay (zeroed in place): the graph holds their addresses
        return self.on_side_stream(lambda: train_step(*self.nets, self.optimizer, x, y, alphas, self.precision,
                                                      self.student_stream, keep_grad_tensors=True))

    def learning_rates(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def on_side_stream(self, fn):
        """fn() on the step's own stream, ordered after everything queued before it and before everything after."""
        caller = torch.cuda.current_stream()
        self.main_stream.wait_stream(caller)
        with torch.cuda.stream(self.main_stream):
            out = fn()
        caller.wait_stream(self.main_stream)
        for tensor in out:  # made on the side stream, used and freed on the caller's: tell the allocator
            tensor.record_stream(caller)
        return out

    def capture(self, x, y, alphas):
        """Record one step on static input buffers. Nothing runs now: the caller replays it for this batch."""
        self.inputs = [x.clone(), y.clone(), alphas.clone()]  # clone keeps channels_last
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.main_stream), no_recompilation():
                loss, loss_ce, loss_c, agree_on_label, confidence = train_step(
                    *self.nets, self.optimizer, *self.inputs, self.precision, self.student_stream,
                    keep_grad_tensors=True)
                # one output buffer, so that handing the outputs to the caller is a single copy
                self.packed_outputs = torch.cat([torch.stack([loss, loss_ce, loss_c, confidence]), agree_on_label])
        except Exception as e:  # nothing ran, so the state saved after the last epoch is consistent
            failure = CaptureFailed("".join(traceback.format_exception(e)))
            if self.on_capture_failure is not None:
                self.on_capture_failure(failure)
            raise failure from e
        self.graph, self.graph_lr = graph, self.learning_rates()
        self.graph_targets = self.graph_tensors()

    def graph_tensors(self):
        """Addresses of every tensor a captured step reads or updates: the networks' parameters and buffers, and per
        optimised parameter the parameter, its gradient and its momentum buffer (0 where there is none)."""
        addresses = [t.data_ptr() for net in self.nets if net is not None for t in (*net.parameters(), *net.buffers())]
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                momentum = self.optimizer.state.get(p, {}).get("momentum_buffer")
                addresses += [p.data_ptr(), 0 if p.grad is None else p.grad.data_ptr(),
                              0 if momentum is None else momentum.data_ptr()]
        return addresses

    def check_graph_targets(self):
        """Once per epoch (a few hundred pointer reads): the graph updates the tensors that existed when it was
        captured. Anything that replaced one since (an optimizer's load_state_dict, a new optimizer, a parameter
        assigned anew) would leave it updating orphans while the run went on; stop with one clear line instead."""
        if self.graph is not None and self.graph_tensors() != self.graph_targets:
            raise RunError("the captured training step no longer updates the networks' and the optimizer's own "
                           "tensors (a parameter, gradient, momentum or BatchNorm tensor was replaced after the "
                           "capture); this epoch is not saved: continue from the last saved epoch with the same "
                           "command and --resume --no-cuda_graph, and please report this")
