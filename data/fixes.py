"""Label fixes: decisions about single images in a CSV file, made on the review page (label_fixes.csv) or by the
candidate policies of studies/fix_policy_study.py, applied to a data set with --label_fixes FILE. No policy without a
reviewer ships: none held on every label set of that study (studies/fix_policy_study.md).

Columns `index,file,given_label,action,new_label`, one row per image at most: `index` is the image's position in the
data set, `file` its file as label_issues.csv writes it (empty where the data set has no files; left empty, it is not
checked), `given_label` its label ON DISK (fixes always map the data set's own labels to new ones, so they can be
checked against it), `action` one of keep (nothing changes), relabel (to `new_label`) and drop (the image leaves
training and validation), `new_label` for relabel only. Images without a row keep their label. numpy only."""
import csv
import dataclasses
import hashlib
import io
import os
from typing import NamedTuple, Optional

import numpy as np

from utils import InputError, atomic_write, printable_path

COLUMNS = ("index", "file", "given_label", "action", "new_label")
ACTIONS = ("keep", "relabel", "drop")


class Fix(NamedTuple):
    line: int  # in the file, for messages (the header is line 1)
    index: int
    file: str
    given_label: int
    action: str
    new_label: Optional[int]


@dataclasses.dataclass
class LabelFixes:
    """A fixes file as applied to a data set: its rows, its bytes (a run trained with it keeps a copy: its content,
    not its path, names the run) and `info`, what applying it did (JSON-ready, for metrics.json and the logs)."""
    rows: list
    content: bytes
    info: dict


def file_sha256(path):
    """The sha256 of a file's content, read in blocks (OSError when it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_dir_suffix(path):
    """What a run with these fixes appends to its run directory: `_fixes_` and the first 8 hex digits of the file's
    sha256, so it never lands where the run without them (or with other fixes) is."""
    return f"_fixes_{file_sha256(path)[:8]}"


def _integer(text, what, where):
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{where}: {what} must be a whole number, got {text!r}") from None


def read_label_fixes(path):
    """(the rows of a fixes file, its bytes): each row checked on its own (the header, the action, numbers where
    numbers belong, one row per index); what needs the data set is checked by apply_label_fixes."""
    try:
        with open(path, "rb") as f:  # read once: the rows, the checksum and the run's copy are of the same bytes
            content = f.read()
        reader = csv.reader(io.StringIO(content.decode("utf-8-sig"), newline=""))  # -sig: spreadsheets write a BOM
        header = tuple(next(reader, ()))
        if header != COLUMNS:
            raise InputError(f"{path}: the header must be {','.join(COLUMNS)}, got {','.join(header) or 'nothing'}")
        fixes, seen = [], {}
        for cells in reader:
            if not any(cells):
                continue  # blank lines, as some editors add at the end
            where = f"{path}, line {reader.line_num}"
            if len(cells) != len(COLUMNS):
                raise InputError(f"{where}: expected {len(COLUMNS)} cells ({','.join(COLUMNS)}), got {len(cells)}")
            index, file, given, action, new = cells
            index = _integer(index, "index", where)
            if index in seen:
                raise InputError(f"{where}: index {index} again (first on line {seen[index]}); one row per image")
            seen[index] = reader.line_num
            if action not in ACTIONS:
                raise InputError(f"{where}: unknown action {action!r}; use keep, relabel or drop")
            if action == "relabel" and not new:
                raise InputError(f"{where}: relabel needs a new_label")
            if action != "relabel" and new:
                raise InputError(f"{where}: new_label is for relabel only; leave it empty for {action}")
            fixes.append(Fix(reader.line_num, index, file, _integer(given, "given_label", where), action,
                             _integer(new, "new_label", where) if new else None))
    except OSError as e:
        raise InputError(f"--label_fixes {path}: cannot read it ({e.strerror or e})") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path} is not a readable CSV file ({type(e).__name__}: {e})") from None
    return fixes, content


def file_of(data, index):
    """The file of image `index` as tables and fixes write it; '' where the data set has no files."""
    return "" if data.train_files is None else printable_path(data.train_files[index])


def _same_file(written, data, index):
    """A fixes file names the image by its file as written in the table (relative or absolute, however --data_dir
    was spelled then); it matches when it ends with the image's path inside the data folder."""
    actual = file_of(data, index)
    if not written or written == actual:
        return True
    if data.files_root is None:
        return False
    inside = printable_path(os.path.relpath(data.train_files[index], data.files_root))
    return written == inside or written.endswith("/" + inside)


def apply_label_fixes(data, path):
    """The Dataset with the fixes of `path` applied: relabel rows change noisy_labels, drop rows mark `dropped`;
    the labels on disk are kept as original_labels and the file is described in label_fixes. Every row is checked
    against the data set first; the first bad one is an InputError naming its line."""
    fixes, content = read_label_fixes(path)
    n, labels = len(data.noisy_labels), data.noisy_labels
    for fix in fixes:
        where = f"{path}, line {fix.line}"
        if not 0 <= fix.index < n:
            raise InputError(f"{where}: index {fix.index} is not an image of this data set (0..{n - 1})")
        if not _same_file(fix.file, data, fix.index):
            raise InputError(f"{where}: image {fix.index} is {file_of(data, fix.index) or 'an image without a file'} "
                             f"in this data set, not {fix.file}; the fixes were made for another data set (or its "
                             f"files changed since)")
        if fix.given_label != labels[fix.index]:
            raise InputError(f"{where}: given_label {fix.given_label}, but image {fix.index} is labelled "
                             f"{labels[fix.index]} in this data set; the fixes were made for another label set "
                             f"(given_label is the label on disk, before any fixes)")
        if fix.action == "relabel" and not 0 <= fix.new_label < data.num_classes:
            raise InputError(f"{where}: new_label {fix.new_label} is not a class of this data set "
                             f"(0..{data.num_classes - 1})")
    fixed, dropped = labels.copy(), np.zeros(n, dtype=bool)
    for fix in fixes:
        if fix.action == "relabel":
            fixed[fix.index] = fix.new_label
        dropped[fix.index] = fix.action == "drop"
    if dropped.all():
        raise InputError(f"{path}: the fixes drop every image of the data set; nothing would be left to train on")
    relabelled, n_dropped = int(np.sum(fixed != labels)), int(dropped.sum())
    info = dict(path=path, sha256=hashlib.sha256(content).hexdigest(), rows=len(fixes), relabelled=relabelled,
                dropped=n_dropped, kept=len(fixes) - relabelled - n_dropped)  # keep rows, and relabels to the same label
    if data.clean_labels is not None:  # the share of wrong labels among the images training uses, before and after
        info.update(wrong_before=float(np.mean(labels != data.clean_labels)),
                    wrong_after=float(np.mean((fixed != data.clean_labels)[~dropped])))
    return dataclasses.replace(data, noisy_labels=fixed, original_labels=labels, dropped=dropped,
                               label_fixes=LabelFixes(fixes, content, info))


def as_row(fix):
    """A Fix as the row of a fixes file: (index, file, given_label, action, new_label)."""
    return fix.index, fix.file, fix.given_label, fix.action, "" if fix.new_label is None else fix.new_label


def fix_row(data, index, new_label):
    """The row taking image `index` from its label on disk to new_label: relabel, or keep where they are equal."""
    on_disk = data.labels_on_disk[index]
    same = new_label == on_disk
    return int(index), file_of(data, index), int(on_disk), "keep" if same else "relabel", "" if same else int(new_label)


def drop_row(data, index):
    """The row taking image `index` out of training and validation."""
    return int(index), file_of(data, index), int(data.labels_on_disk[index]), "drop", ""


def write_label_fixes(path, rows):
    """Write rows (index, file, given_label, action, new_label) with the header, atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode("utf-8")))
