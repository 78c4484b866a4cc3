"""The four pictures of a run (drawn by plots.py). matplotlib is an optional extra: it is imported only here, only
when a picture is drawn, and its absence is one clear line. Each function takes plain numbers and returns a figure."""
import io
import os

import numpy as np

from utils import InputError, atomic_write
from utils.bkd import precision_recall_f1
from utils.metrics import auroc, average_precision, precision_recall_curve

INSTALL_HINT = "the pictures need matplotlib, an optional extra: pip install matplotlib"
CLEAN, NOISY, FLAGGED = "tab:blue", "tab:orange", "tab:red"  # truly clean, truly mislabelled, the flagged region


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display); an InputError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(plt, fig, path):
    """Write the figure as a PNG atomically, then free it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")  # tight: no label is clipped
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def confidence_figure(plt, confidence, tipping_epoch, found_epoch, test):
    """Student confidence per epoch with the tipping epoch and the epoch it was found (the split); clean test
    accuracy (list of {epoch, accuracy} in %, maybe empty) on a second axis."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    epochs = np.arange(len(confidence))
    handles = ax.plot(epochs, confidence, "o-", color="tab:blue", markersize=4, label="student confidence")
    if tipping_epoch is not None:
        handles.append(ax.axvline(tipping_epoch, color="tab:red", label=f"tipping epoch {tipping_epoch}"))
        ax.plot([tipping_epoch], [confidence[tipping_epoch]], "*", color="tab:red", markersize=14)  # the peak
        handles.append(ax.axvline(found_epoch, color="tab:red", linestyle="--",
                                  label=f"found at epoch {found_epoch} (the split)"))
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.set_ylabel("student confidence (mean highest probability)", color="tab:blue")
    ax.set_xlim(-0.5, max(len(confidence) - 0.5, 0.5))
    ax.grid(alpha=0.3)
    if test:
        ax2 = ax.twinx()
        handles += ax2.plot([t["epoch"] for t in test], [t["accuracy"] for t in test], "s-", color="tab:green",
                            markersize=5, label="clean test accuracy")
        ax2.set_ylabel("clean test accuracy (%)", color="tab:green")
        ax2.set_ylim(0, 100)
    ax.legend(handles=handles, loc="lower right")
    ax.set_title("Student confidence per epoch and the tipping point" if tipping_epoch is not None else
                 "Student confidence per epoch (no tipping epoch found)")
    return fig


def scores_figure(plt, scores, split, flagged, truly_noisy):
    """Histogram of the detection scores with the Otsu threshold, the lower and upper means and the flagged region
    (group 4); stacked into truly clean and truly mislabelled when the ground truth (bool array or None) is known."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bins = np.linspace(0, 1, 51)
    if truly_noisy is None:
        ax.hist(scores, bins=bins, color="tab:gray", label="training images")
    else:
        ax.hist([scores[~truly_noisy], scores[truly_noisy]], bins=bins, stacked=True, color=[CLEAN, NOISY],
                label=[f"truly clean ({int((~truly_noisy).sum()):,})",
                       f"truly mislabelled ({int(truly_noisy.sum()):,})"])
    if split is not None:
        ax.axvspan(0, split["lower_mean"], color=FLAGGED, alpha=0.12, zorder=0,
                   label=f"flagged, group 4 ({int(flagged.sum()):,}): below the lower mean")
        ax.axvline(split["lower_mean"], color=FLAGGED, label=f"lower mean {split['lower_mean']:.3f}")
        ax.axvline(split["threshold"], color="black", linestyle="--", label=f"Otsu threshold {split['threshold']:.3f}")
        ax.axvline(split["upper_mean"], color="tab:green", label=f"upper mean {split['upper_mean']:.3f}")
        title = "Detection scores and their Otsu split"
    else:
        title = "Detection scores (no Otsu split was possible: nothing flagged)"
    ax.set_xlim(0, 1)
    ax.set_xlabel("agreement on the given label (detection score; low = suspicious)")
    ax.set_ylabel("training images per bin")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)  # outside: it never hides a bar or a line
    ax.set_title(title)
    return fig


def precision_recall_figure(plt, scores, flagged, truly_noisy, flagged_column=None):
    """Precision-recall curve of the ranking by suspicion (low agreement first), with detection.npy's operating
    point, the flagged column's of label_issues.csv where given (it need not lie on the curve: it is not a threshold
    on the score), and the precision of flagging at random (the noise rate). Drawn as steps, so the area under it is
    the average precision."""
    fig, ax = plt.subplots(figsize=(6, 5))
    precision, recall, _ = precision_recall_curve(-scores, truly_noisy)
    ax.plot(np.r_[0, recall], np.r_[precision[0], precision], drawstyle="steps-pre", color="tab:blue",
            label=f"ranking by score (AP {average_precision(-scores, truly_noisy):.3f}, "
                  f"AUROC {auroc(-scores, truly_noisy):.3f})")
    p, r, f1 = precision_recall_f1(flagged, truly_noisy)
    ax.plot([r], [p], "*", color=FLAGGED, markersize=16,
            label=f"detection.npy ({int(flagged.sum()):,} flagged): P {p:.3f}, R {r:.3f}, F1 {f1:.3f}")
    if flagged_column is not None:
        p, r, f1 = precision_recall_f1(flagged_column, truly_noisy)
        ax.plot([r], [p], "D", color="tab:green", markersize=10,
                label=f"flagged column ({int(flagged_column.sum()):,}): P {p:.3f}, R {r:.3f}, F1 {f1:.3f}")
    ax.axhline(truly_noisy.mean(), color="tab:gray", linestyle=":",
               label=f"flagging at random: noise rate {truly_noisy.mean():.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (share of the mislabelled images found)")
    ax.set_ylabel("precision (share of the flagged that are mislabelled)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    ax.set_title("Precision and recall of the detection scores")
    return fig


def _caption(given, suggested, width=22):
    """'given → suggested', on two lines when too long for a cell."""
    text = f"{given} → {suggested}"
    return text if len(text) <= width else f"{given} →\n{suggested}"


def _image_name(index, file, width=22):
    """The image's file name where the data set has one (its end, if too long for a cell), else #index."""
    name = os.path.basename(file) if file else f"#{index}"
    return name if len(name) <= width else "…" + name[-(width - 1):]


def suspicious_figure(plt, images, table, truly_noisy, rows=4, cols=8, score_column="agreement_given"):
    """A rows x cols grid of the most suspicious training images in label_issues.csv order, each captioned with its
    score (the table's ranking column) and 'given → suggested'; the caption is orange where the given label is truly
    wrong, blue where it is right, when that is known. Images dropped by label fixes (group "dropped") are left out."""
    shown = [k for k, group in enumerate(table["group"]) if group != "dropped"][:rows * cols]
    n = len(shown)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.4 * rows + 0.6), squeeze=False)
    for j, ax in enumerate(axes.flat):
        ax.axis("off")
        if j >= n:
            continue
        k = shown[j]
        i = table["index"][k]
        given = table["given_class"][k] or table["given_label"][k]
        suggested = table["suggested_class"][k] or table["suggested_label"][k]
        color = "black" if truly_noisy is None else (NOISY if truly_noisy[i] else CLEAN)
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(f"{_image_name(i, table['file'][k])}\nscore {table[score_column][k]:.2g}\n"
                     f"{_caption(given, suggested)}", fontsize=9, color=color)
    note = "" if truly_noisy is None else "; orange = truly mislabelled, blue = truly clean"
    fig.suptitle(f"The {n} most suspicious training images: file (or #index), detection score, "
                 f"given label → suggested label{note}", fontsize=11)
    fig.tight_layout()
    return fig
