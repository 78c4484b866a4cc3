"""The training step the script calls: utils.engine.train_step, eager, or on CUDA captured once as a CUDA graph.

A PreResNet18 pair at batch 128 is bound by launching hundreds of small kernels from Python, not by arithmetic.
A CUDA graph records the whole step (both forwards, both losses, backward, the SGD update, the per-sample
statistics) once and replays it with one launch; teacher and student run on two streams inside it.
"""
import contextlib

import torch

from utils import RunError
from utils.engine import train_step


def no_recompilation():
    """torch.compile must not compile inside a capture (it would synchronise): with --compile the eager warm-up
    steps compiled everything the capture calls, and a recompilation becomes an error instead (torch >= 2.6)."""
    if hasattr(torch.compiler, "set_stance"):
        return torch.compiler.set_stance("fail_on_recompile")
    return contextlib.nullcontext()


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
    A replayed step returns the same output tensors every time, overwritten by the next replay: use them first
    (the training loop does, on the same stream)."""

    def __init__(self, teacher, student, optimizer, precision, batch_size, cuda_graph=False, warmup=3):
        self.nets, self.optimizer, self.precision = (teacher, student), optimizer, precision
        self.batch_size, self.cuda_graph, self.warmup = batch_size, cuda_graph, warmup
        self.full_eager_steps, self.graph, self.graph_lr = 0, None, None
        if cuda_graph:  # work of the step goes to side streams, as capturing needs (never the legacy default stream)
            self.main_stream, self.student_stream = torch.cuda.Stream(), torch.cuda.Stream()

    def __call__(self, x, y, alphas):
        if not self.cuda_graph:
            return train_step(*self.nets, self.optimizer, x, y, alphas, self.precision)
        if self.graph is not None and self.graph_lr != self.learning_rates():
            self.graph = self.outputs = None  # drops the old graph and its memory before the new capture
        full = len(y) == self.batch_size
        if full and self.graph is None and self.full_eager_steps >= self.warmup:
            self.capture(x, y, alphas)
        if full and self.graph is not None:
            for buffer, value in zip(self.inputs, (x, y, alphas)):
                buffer.copy_(value)
            self.graph.replay()
            return self.outputs
        self.full_eager_steps += full
        return self.on_side_stream(lambda: train_step(*self.nets, self.optimizer, x, y, alphas, self.precision,
                                                      self.student_stream))

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
                self.outputs = train_step(*self.nets, self.optimizer, *self.inputs, self.precision,
                                          self.student_stream)
        except RuntimeError as e:  # nothing ran, so the state saved after the last epoch is consistent
            lines = str(e).strip().splitlines()
            raise RunError(f"capturing the training step as a CUDA graph failed ({lines[0] if lines else e}); "
                           f"continue with --resume --no-cuda_graph, and please report this") from None
        self.graph, self.graph_lr = graph, self.learning_rates()
