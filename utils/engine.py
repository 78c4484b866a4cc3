"""Device, precision and evaluation helpers shared by the training and evaluation scripts."""
import contextlib
import random

import numpy as np
import torch

from utils import InputError
from utils.dist import all_reduce
from utils.bkd import agreement, compensation_loss, robust_targets, soft_cross_entropy


def get_device(name):
    """The torch.device of --device: auto (cuda if available, else cpu), cpu, cuda or cuda:N. A CUDA device always
    comes with its index (cuda means the current one, normally cuda:0): torch.cuda.set_device, CUDA graphs and
    streams need one."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def synchronize(device):
    """Wait for the device's queued work (a no-op on CPU): only where a wall-clock figure needs it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_precision(precision):
    """(the precision a run uses, why): --precision auto means fp32 on every device, the reference's numerics
    (PyTorch's defaults; TF32 convolutions where the GPU has them), since the parity study did not show bf16 autocast
    equal to it on every label set (studies/precision_study.md); bf16 only when asked for."""
    if precision == "auto":
        return "fp32", "--precision auto: fp32 on every device, the reference's numerics (see docs/precision.md)"
    return precision, f"--precision {precision}, as asked" + (
        " (opt-in: not shown equal to fp32, see docs/precision.md)" if precision == "bf16" else "")


def autocast(device, precision):
    """bf16 autocast when asked; a no-op context otherwise (fp32 = the reference's numerics).

    Without autocast's weight-cast cache: the cache lives until the outermost autocast region closes, so a step
    called inside an outer region (or captured as a CUDA graph) would keep using the bf16 copies of the weights
    made before the last update. Each weight is cast once per forward anyway, so the cache saves nothing here."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def make_optimizer(networks, args, device):
    """One SGD over the parameters of both networks (the one of a ce run: None is left out), fused on CUDA (one
    kernel for all), foreach on CPU."""
    params = [p for net in networks if net is not None for p in net.parameters()]
    kernel = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, **kernel)


def agreement_or_own(t, s):
    """The agreement of teacher and student (utils.bkd.agreement); without a student, the network's own softmax."""
    return torch.softmax(t, dim=1) if s is None else agreement(t, s)


def forward_pair(teacher, student, x, student_stream=None):
    """Logits of both networks. With a CUDA student_stream the student runs there, concurrently with the teacher
    (the two are independent until the loss); autograd then runs its backward on that stream too. No student (the ce
    recipe): its logits are None."""
    if student is None:
        return teacher(x), None
    if student_stream is None:
        return teacher(x), student(x)
    main = torch.cuda.current_stream(x.device)
    student_stream.wait_stream(main)  # x is ready
    with torch.cuda.stream(student_stream):
        s = student(x)
    t = teacher(x)
    main.wait_stream(student_stream)
    return t, s


def train_step(teacher, student, optimizer, x, y, alphas, precision, student_stream=None, keep_grad_tensors=False):
    """One BKD step on a batch: both forwards, both losses, backward, one SGD step for both networks.

    Returns (loss, naive loss, compensation loss, agreement on each sample's label (B,), sum over the batch of the
    student's highest probability), all detached fp32 device tensors; nothing here waits for the device, so the
    step can also be captured as a CUDA graph (utils.step.TrainStep). keep_grad_tensors=True zeroes the gradients
    in place, as a captured step needs (the graph writes into the same tensors every time); otherwise they are set
    to None, so backward hands over each fresh gradient instead of adding it to zeros (one kernel less per
    parameter, the same numbers).
    Without a student (the ce recipe): plain cross-entropy on the given labels, a compensation loss of 0, and the
    network's own probabilities in place of the agreement and of the student's confidence.
    An empty batch (under torchrun, a rank's share of a last batch smaller than the number of ranks) has a loss of 0
    and zero gradients, not the nan of a mean over nothing: it contributes nothing, and the rank still steps with the
    others."""
    with autocast(x.device, precision):
        t, s = forward_pair(teacher, student, x, student_stream)
    if s is None:  # the ce recipe: the network learns the given label, nothing else
        t, p_s = t.float(), None
        loss_c = torch.zeros((), device=x.device)
        loss_ce = torch.nn.functional.cross_entropy(t, y)
    else:
        t, s = t.float(), s.float()
        p_s = torch.softmax(s, dim=1)
        loss_c = compensation_loss(t, s, y)  # the student learns the teacher's logits, blind to the label's class
        loss_ce = soft_cross_entropy(t, robust_targets(y, p_s, alphas))  # the teacher learns the (softened) label
    if not len(y):  # the mean over no sample: 0, still on the graph so that every parameter gets its (zero) gradient
        loss_ce = t.sum() * 0.0
    loss = loss_ce + loss_c
    optimizer.zero_grad(set_to_none=not keep_grad_tensors)
    loss.backward()
    optimizer.step()
    with torch.no_grad():  # the per-sample statistics of the method, from this step's (pre-update) logits
        agree_on_label = agreement_or_own(t, s).gather(1, y[:, None]).squeeze(1)
        confidence = (torch.softmax(t, dim=1) if p_s is None else p_s).detach().amax(dim=1).sum()
    return loss.detach(), loss_ce.detach(), loss_c.detach(), agree_on_label, confidence


@torch.inference_mode()
def agreement_pass(teacher, student, batches, precision="fp32", keep_probs=False, keep_teacher=False,
                   keep_logits=False):
    """Both networks in eval mode over every sample of `batches`, in split order: (agreement on the sample's
    label, the label the agreement predicts (its argmax), the agreement of that prediction), as device tensors;
    with keep_probs, also the agreement of every class (N, C); with keep_teacher, also the class the teacher alone
    predicts (N,); with keep_logits, also the teacher's and the student's logits, (N, C) each. Under torchrun each
    rank fills its share and the sum over ranks completes the arrays on every rank. Without a student (the ce recipe)
    the network's own probabilities stand for the agreement."""
    teacher.eval()
    if student is not None:
        student.eval()
    device = batches.indices.device
    n = len(batches.indices)
    agree_on_label = torch.zeros(n, device=device)
    predicted = torch.zeros(n, dtype=torch.long, device=device)
    agree_of_predicted = torch.zeros(n, device=device)
    probs = logits = None
    teacher_predicted = torch.zeros(n, dtype=torch.long, device=device) if keep_teacher else None
    for x, y, pos in batches:
        with autocast(device, precision):
            t, s = teacher(x), None if student is None else student(x)
        t, s = t.float(), None if s is None else s.float()
        p = agreement_or_own(t, s)
        agree_on_label[pos] = p.gather(1, y[:, None]).squeeze(1)
        agree_of_predicted[pos], predicted[pos] = p.max(dim=1)
        if keep_probs:
            probs = torch.zeros(n, p.shape[1], device=device) if probs is None else probs
            probs[pos] = p
        if keep_teacher:
            teacher_predicted[pos] = t.argmax(dim=1)
        if keep_logits:
            logits = torch.zeros(2, n, t.shape[1], device=device) if logits is None else logits
            logits[0, pos], logits[1, pos] = t, s
    out = (all_reduce(agree_on_label), all_reduce(predicted), all_reduce(agree_of_predicted))
    return (out + ((all_reduce(probs),) if keep_probs else ())
            + ((all_reduce(teacher_predicted),) if keep_teacher else ())
            + ((all_reduce(logits[0]), all_reduce(logits[1])) if keep_logits else ()))


def prediction_reading(teacher, student, batches, precision="fp32"):
    """(percent of samples whose agreement prediction equals their label, the share of the samples in the class the
    agreement predicts most often) from one pass: the watch's reading of the validation split (utils.watch)."""
    predicted = agreement_pass(teacher, student, batches, precision)[1]
    hit = (predicted == batches.labels[batches.indices]).float().mean()  # as accuracy() computes it
    hit, top = torch.stack([hit.double(), torch.bincount(predicted).max().double()]).tolist()  # one host sync
    return hit * 100, top / len(predicted)  # the share exact: 6 of 10 is 0.6, not float32's 0.60000002


def accuracies(teacher, student, batches, precision="fp32"):
    """{what: percent of samples whose prediction equals their label} from one pass (one host sync): "pair", the
    agreement of teacher and student (what the reference evaluates), and "teacher", the teacher's own argmax; a ce
    run (no student) has one, "network"."""
    out = agreement_pass(teacher, student, batches, precision, keep_teacher=student is not None)
    predicted = {"network": out[1]} if student is None else {"pair": out[1], "teacher": out[3]}
    labels = batches.labels[batches.indices]
    hits = torch.stack([(p == labels).float().mean() for p in predicted.values()]).tolist()
    return {what: hit * 100 for what, hit in zip(predicted, hits)}


def accuracy(teacher, student, batches, precision="fp32", predict="pair"):
    """Percent of samples whose prediction equals their label: predict "pair" or "teacher" (accuracies), or
    "network" for a ce run's one network (student None)."""
    if predict not in (("network",) if student is None else ("pair", "teacher")):
        raise ValueError(f"predict must be {'network' if student is None else 'pair or teacher'}, not {predict!r}")
    return accuracies(teacher, student, batches, precision)[predict]
