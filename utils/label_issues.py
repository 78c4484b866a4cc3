"""A run's detection outputs: label_issues.csv (one row per training image, ranked from most to least suspicious,
with the label BKD suggests), written by the training script at the split, and the readers that detection.py and
plots.py share for it, detection.npy and detection_scores.npy. numpy only (no torch)."""
import csv
import io
import os

import numpy as np

from utils import InputError, atomic_write, printable_path

COLUMNS = ("index", "file", "given_label", "given_class", "suggested_label", "suggested_class",
           "final_agreement_given", "final_teacher_given", "agreement_given", "agreement_suggested", "group", "flagged")
# the tables of earlier versions: no final_teacher_given, and before that no final_agreement_given (read as nan)
EARLIER_COLUMNS = (COLUMNS[:7] + COLUMNS[8:], COLUMNS[:6] + COLUMNS[8:])
FINAL_COLUMNS = ("final_agreement_given", "final_teacher_given")


def suspicion_order(ranking, dropped=None):
    """Dataset indices from most to least suspicious: ascending ranking score (an agreement on the given label),
    ties by index; images dropped by label fixes come last (they are no longer part of the data set's labels)."""
    order = np.argsort(np.asarray(ranking), kind="stable")
    return order if dropped is None else np.concatenate([order[~dropped[order]], order[dropped[order]]])


def ranking_column(metrics):
    """The column of label_issues.csv that orders it, from the run's metrics.json: final_teacher_given where the
    final teacher judged the labels, final_agreement_given where the final networks did (--judge final of earlier
    versions), agreement_given (the tipping pass's) where the split did or the run predates the final judgement."""
    return {"final_teacher": "final_teacher_given", "final": "final_agreement_given"}.get(metrics.get("judged_by"),
                                                                                          "agreement_given")


def as_written(values):
    """The values as label_issues.csv writes them (6 significant digits), read back: what a reader of the file
    ranks by, so that a run's scores of its ranking and detection.py's, recomputed from the file, are the same."""
    return np.char.mod("%.6g", np.asarray(values, dtype=np.float64)).astype(np.float64)


def _names(labels, class_names):
    """Class name of each label, or empty strings where the data set has no class names."""
    if class_names is None:
        return [""] * len(labels)
    return np.asarray(class_names, dtype=object)[labels].tolist()


def write_label_issues(path, given, suggested, agreement_given, agreement_suggested, groups, flagged,
                       class_names=None, files=None, dropped=None, final_given=None, ranking=None,
                       final_teacher_given=None):
    """Write the table to `path` atomically, sorted by `ranking` (ascending: low = suspicious; default
    agreement_given). Arrays are length N in dataset order; `final_given` is the final networks' agreement on each
    given label and `final_teacher_given` the final teacher's probability of it (nan where None), `groups` (1..4) is
    None when the detection split was impossible, `class_names` and `files` are None where the data set has none
    (empty cells), `dropped` (bool) marks images that label fixes dropped: their group reads "dropped" and they come
    last. Agreements are written with 6 significant digits; files
    as utils.printable_path writes them."""
    given, suggested = np.asarray(given, dtype=np.int64), np.asarray(suggested, dtype=np.int64)
    agreement_given = np.asarray(agreement_given, dtype=np.float64)
    final_given, final_teacher_given = (np.full(len(given), np.nan) if a is None else np.asarray(a, dtype=np.float64)
                                        for a in (final_given, final_teacher_given))
    ranking = agreement_given if ranking is None else np.asarray(ranking, dtype=np.float64)
    agreement_suggested = np.asarray(agreement_suggested, dtype=np.float64)
    flagged = np.asarray(flagged, dtype=bool)
    n = len(given)
    arrays = dict(suggested=suggested, agreement_given=agreement_given, agreement_suggested=agreement_suggested,
                  flagged=flagged, groups=groups, files=files, dropped=dropped, final_given=final_given,
                  final_teacher_given=final_teacher_given, ranking=ranking)
    for name, a in arrays.items():
        if a is not None and len(a) != n:
            raise ValueError(f"write_label_issues: {name} has {len(a)} entries, given has {n}")
    dropped = None if dropped is None else np.asarray(dropped, dtype=bool)
    order = suspicion_order(ranking, dropped)
    g, s = given[order], suggested[order]
    group_cells = [""] * n if groups is None else np.asarray(groups, dtype=np.int64)[order].astype(str)
    if dropped is not None:
        group_cells = np.where(dropped[order], "dropped", group_cells)
    columns = [order.tolist(),
               [""] * n if files is None else [printable_path(files[i]) for i in order],
               g.tolist(), _names(g, class_names), s.tolist(), _names(s, class_names),
               np.char.mod("%.6g", final_given[order]).tolist(),
               np.char.mod("%.6g", final_teacher_given[order]).tolist(),
               np.char.mod("%.6g", agreement_given[order]).tolist(),
               np.char.mod("%.6g", agreement_suggested[order]).tolist(),
               list(group_cells), np.where(flagged[order], "True", "False").tolist()]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(zip(*columns))
    atomic_write(path, lambda f: f.write(buf.getvalue().encode("utf-8")))


def read_label_issues(path, n):
    """The table at `path` as a dict of numpy arrays in the file's order (most suspicious first): index,
    given_label, suggested_label (int), final_agreement_given, final_teacher_given (nan in a table of an earlier
    version that lacks them), agreement_given, agreement_suggested (float), flagged (bool), plus the text columns
    file, given_class, suggested_class, group (lists of str). Checks it has N rows, each index once."""
    if not os.path.isfile(path):
        raise _not_split(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = tuple(next(reader, ()))
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path} is not a readable CSV file ({type(e).__name__}: {e})") from None
    if header not in (COLUMNS, *EARLIER_COLUMNS):
        raise InputError(f"{path}: expected the columns {', '.join(COLUMNS)}; got {', '.join(header) or 'none'}")
    if len(rows) != n or any(len(r) != len(header) for r in rows):
        raise InputError(f"{path}: expected {n} rows of {len(header)} cells (one per training image), "
                         f"got {len(rows)} rows; the file does not belong to this data set")
    cells = dict(zip(header, zip(*rows))) if rows else {c: () for c in header}
    for column in FINAL_COLUMNS:
        cells.setdefault(column, ("nan",) * len(rows))
    try:
        table = dict(index=np.array(cells["index"], dtype=np.int64),
                     given_label=np.array(cells["given_label"], dtype=np.int64),
                     suggested_label=np.array(cells["suggested_label"], dtype=np.int64),
                     **{c: np.array(cells[c], dtype=np.float64) for c in FINAL_COLUMNS},
                     agreement_given=np.array(cells["agreement_given"], dtype=np.float64),
                     agreement_suggested=np.array(cells["agreement_suggested"], dtype=np.float64),
                     flagged=np.array([v == "True" for v in cells["flagged"]], dtype=bool),
                     file=list(cells["file"]), given_class=list(cells["given_class"]),
                     suggested_class=list(cells["suggested_class"]), group=list(cells["group"]))
    except ValueError as e:
        raise InputError(f"{path}: a cell is not a number ({e})") from None
    if not np.array_equal(np.sort(table["index"]), np.arange(n)):
        raise InputError(f"{path}: the index column must hold every image index 0..{n - 1} exactly once")
    return table


def in_dataset_order(table, column):
    """A numpy column of the table rearranged into dataset order (entry i = image i)."""
    values = np.asarray(table[column])  # the text columns are lists
    out = np.empty_like(values)
    out[table["index"]] = values
    return out


def _not_split(path):
    return InputError(f"no {path}: the run in {os.path.dirname(path)} has not split yet (no tipping epoch found, or "
                      f"not trained); run blind_knowledge_dist_training.py with the same --dataset, --noise_type and "
                      f"--seed, and enough epochs")


def require_detection(out_dir):
    """One clear InputError when the run in out_dir has written no detection.npy (before anything slow)."""
    path = os.path.join(out_dir, "detection.npy")
    if not os.path.isfile(path):
        raise _not_split(path)


def _load_npy(path, n, dtype_ok, what):
    """A 1-D .npy file of n entries whose dtype passes dtype_ok; one clear InputError otherwise."""
    if not os.path.isfile(path):
        raise _not_split(path)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:
        raise InputError(f"{path} is not a readable .npy file ({type(e).__name__}: {e})") from None
    if not dtype_ok(array.dtype) or array.shape != (n,):
        raise InputError(f"{path}: expected {what} of shape ({n},) (one per training image), "
                         f"got {array.dtype} of shape {array.shape}")
    return array


def load_detection(path, n):
    """detection.npy: True where the label is believed wrong."""
    return _load_npy(path, n, lambda t: t == np.bool_, "a boolean array")


def load_scores(path, n):
    """detection_scores.npy: the agreement on each given label (low = suspicious), as float64."""
    scores = _load_npy(path, n, lambda t: np.issubdtype(t, np.floating), "a float array").astype(np.float64)
    if not np.all((scores >= 0) & (scores <= 1)):
        raise InputError(f"{path}: detection scores must lie in [0, 1] (they are agreements), "
                         f"got min {np.nanmin(scores)}, max {np.nanmax(scores)}")
    return scores
