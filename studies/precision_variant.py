"""Train with a variant of bf16 autocast that keeps one part in fp32, to find where bf16 loses (studies/precision_study.py).

    python studies/precision_variant.py --variant fp32_head <the training script's flags>

Runs blind_knowledge_dist_training.py exactly, with --precision bf16, and one change:
  fp32_head       the last layer (linear) runs in fp32 on fp32 features, so the logits, the losses, the soft
                  targets, the agreements and the confidence all come from fp32 logits (plain bf16 computes them in
                  fp32 too, but from logits rounded to bf16's 8 significant bits)
  fp32_batchnorm  every BatchNorm layer runs in fp32 (input, statistics and output)
  fp32_eval       training as bf16, but every evaluation pass in fp32: the full-set pass that gives the detection
                  scores, the validation and the clean test accuracy (the training trajectory is bf16's own: the
                  passes draw the same random augmentation and change no state)
metrics.json's args record the variant. A study tool, not a training option.
"""
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import blind_knowledge_dist_training as training  # noqa: E402
from flags import check_args, get_args_parser  # noqa: E402
from utils.cli import run_main  # noqa: E402

VARIANTS = ("fp32_head", "fp32_batchnorm", "fp32_eval")


def in_fp32(module):
    """Make `module` run in fp32 under autocast: its input cast up, autocast off inside it."""
    forward = module.forward

    def fp32_forward(x):
        with torch.autocast(x.device.type, enabled=False):
            return forward(x.float())
    module.forward = fp32_forward
    return module


def patch(variant):
    if variant in ("fp32_head", "fp32_batchnorm"):
        build = training.build_model

        def build_model(arch, num_classes):
            net = build(arch, num_classes)
            for module in net.modules():
                if (variant == "fp32_head" and module is net.linear) or (
                        variant == "fp32_batchnorm" and isinstance(module, torch.nn.modules.batchnorm._BatchNorm)):
                    in_fp32(module)
            return net
        training.build_model = build_model
    elif variant == "fp32_eval":
        agreement_pass, accuracies = training.agreement_pass, training.accuracies
        training.agreement_pass = lambda teacher, student, batches, precision, **keep: agreement_pass(
            teacher, student, batches, "fp32", **keep)
        training.accuracies = lambda teacher, student, batches, precision: accuracies(teacher, student, batches, "fp32")


if __name__ == "__main__":
    parser = get_args_parser(__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, choices=VARIANTS, help="what stays in fp32 (see above)")
    args = parser.parse_args()
    if args.precision != "bf16":
        parser.error("argument --precision: the variants are of bf16 autocast; pass --precision bf16")
    patch(args.variant)
    run_main(training.main, parser, check_args)  # metrics.json's args hold the variant
