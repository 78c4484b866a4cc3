"""A fixed copy of a data set on disk (export_fixed_data.py): the fixes of a label-fixes file applied to the data
itself, for the tools and the people that never see --label_fixes. The original is never written to.

An image folder becomes a new folder in the same layout: every training image in the folder of its label after the
fixes, at the same path below it, dropped images left out, test/ as it is. Where a relabelled image's name is taken in
its new class folder (folders numbered alike: 0001.jpg in each), it becomes <name>_from_<old class><ext> (then _2,
_3, ...), listed in the manifest. The files are hard links to the originals where the file system allows, copies
otherwise. Only the images the loader reads are copied (no cache, no other files). An .npz file becomes a new .npz
without the dropped images and with the labels after the fixes (clean_labels, the test set and class_names as they
were): image j of the copy is the j-th image not dropped. Every class must keep a training image, or the copy would
not load (or would number its classes differently).

Beside the copy, a manifest (MANIFEST) traces it back: the source, the fixes file and its sha256, the counts, every
image relabelled or dropped. Everything is written into a temporary folder beside the copy and renamed into place at
the end, so a failed or interrupted export leaves nothing behind. numpy and PIL (through data.folder) only."""
import collections
import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
import zipfile

import numpy as np
from tqdm import tqdm

from utils import InputError, RunError, printable_path
from .arrays import load_npz
from .dataset import Dataset
from .fixes import apply_label_fixes
from .folder import list_folder

MADE_BY = "export_fixed_data.py"
MANIFEST = "manifest.json"  # inside a folder copy; beside an .npz copy as <copy>.manifest.json


def manifest_path(out, dataset):
    """Where the manifest of a copy is: inside a folder (it travels with it), beside an .npz file (whose loader
    refuses arrays it does not know)."""
    return os.path.join(out, MANIFEST) if dataset == "folder" else out + ".manifest.json"


def is_export(out, dataset):
    """True when out is a copy this command wrote: its manifest is there and says so."""
    try:
        with open(manifest_path(out, dataset), "rb") as f:
            return json.loads(f.read().decode("utf-8")).get("made_by") == MADE_BY
    except (OSError, ValueError, AttributeError):  # no manifest, not JSON, not an object
        return False


def check_out(out, source, dataset, overwrite):
    """Refuse an --out that would touch the original (the source itself, a path inside it or around it), that has no
    folder to go into, or that exists (unless overwrite, and then only an earlier export)."""
    real_out, real_source = os.path.realpath(out), os.path.realpath(source)
    if os.path.commonpath([real_out, real_source]) in (real_out, real_source):
        raise InputError(f"--out {printable_path(out)} is the source {printable_path(source)}, inside it or around "
                         f"it; the copy goes elsewhere, so that the original stays as it is")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise InputError(f"--out {printable_path(out)}: there is no folder {printable_path(parent)} to write it "
                         f"into; create it first")
    if os.path.lexists(out):
        if not overwrite:
            raise InputError(f"--out {printable_path(out)} exists; choose another path, or pass --overwrite to "
                             f"replace it")
        if not is_export(out, dataset):
            raise InputError(f"--out {printable_path(out)} exists and is not a copy written by {MADE_BY} (no "
                             f"{printable_path(manifest_path(out, dataset))} of it); --overwrite replaces only "
                             f"those: remove it yourself or choose another path")


def folder_listing(root):
    """The training set of an image folder as --dataset folder lists it (data.folder.list_folder: the same classes,
    files, labels and checks), without decoding an image: an export copies files, and the loader would write its
    cache into the original. (the Dataset, whose images are empty placeholders, and the test files)."""
    class_names, train_files, labels, test_files, _ = list_folder(root)
    no_images = np.zeros((len(train_files), 0, 0, 3), np.uint8)
    data = Dataset("folder", len(class_names), no_images, labels, None, None, None, class_names=class_names,
                   train_files=train_files, mean_std=((0.0,) * 3, (1.0,) * 3), files_root=os.path.normpath(root))
    return data, test_files


def check_every_class_kept(fixed, fixes_path):
    """A class left without training images would stop the copy from loading (an .npz may also number its classes
    anew): refuse, naming the class."""
    counts = np.bincount(fixed.noisy_labels[fixed.kept], minlength=fixed.num_classes)
    if (counts == 0).any():
        k = int(np.flatnonzero(counts == 0)[0])
        name = f"{printable_path(fixed.class_names[k])} ({k})" if fixed.class_names else str(k)
        raise InputError(f"{printable_path(fixes_path)}: after the fixes, class {name} has no training image left, "
                         f"and a copy without it would not load; keep or relabel into it at least one image")


def occupy(taken, path):
    """Mark path, and the folders above it, as used in the copy."""
    while path and path not in taken:
        taken.add(path)
        path = os.path.dirname(path)


def free_name(wanted, old_class, taken):
    """wanted if it is free in the copy, else <name>_from_<old class><ext>, then _2, _3, ...: the extension stays
    last, so the loader still reads the file."""
    if wanted not in taken:
        return wanted
    stem, ext = os.path.splitext(wanted)
    candidate, n = f"{stem}_from_{old_class}{ext}", 2
    while candidate in taken:
        candidate, n = f"{stem}_from_{old_class}_{n}{ext}", n + 1
    return candidate


def folder_plan(fixed, test_files):
    """Where each file of a fixed folder goes: [(source file, its path in the copy)], and {index: path in the copy} of
    the relabelled training images (see the module's docstring). Images keep their path; relabelled ones go to their
    new class folder in index order, after every image that stays, so a name is only ever changed on one that moved."""
    root, names = fixed.files_root, fixed.class_names
    before, after, kept = fixed.labels_on_disk, fixed.noisy_labels, fixed.kept
    plan = [(f, os.path.relpath(f, root)) for f in test_files]
    taken, moved = set(), {}
    for i in np.flatnonzero(kept & (after == before)):
        path = os.path.relpath(fixed.train_files[i], root)
        plan.append((fixed.train_files[i], path))
        occupy(taken, path)
    for i in np.flatnonzero(kept & (after != before)):
        below_class = os.path.relpath(fixed.train_files[i], os.path.join(root, "train", names[before[i]]))
        path = free_name(os.path.join("train", names[after[i]], below_class), names[before[i]], taken)
        plan.append((fixed.train_files[i], path))
        occupy(taken, path)
        moved[int(i)] = path
    return plan, moved


def link_or_copy(source, dest, always_copy=False):
    """Put source at dest, a new name: a hard link (no space, instant) unless always_copy or the file system refuses
    one, else a copy made through a file created for it (never an existing one, which could be a link into the
    original). (how, why no link): ("link", None) or ("copy", the reason, None when always_copy)."""
    why = None
    if not always_copy:
        try:
            os.link(source, dest)  # follows a symlinked source: the link is to the image itself
            return "link", None
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EEXIST):  # a file gone, a name taken: no copy would do better
                raise
            why = e.strerror or str(e)  # another file system (EXDEV), one without links, a file of another user
    with open(source, "rb") as src, open(dest, "xb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copystat(source, dest)
    return "copy", why


def copy_files(plan, copy_dir, always_copy=False):
    """Write every (source, path) of plan under copy_dir; ({"link": n, "copy": m}, why a link was refused or None)."""
    counts, refused = {"link": 0, "copy": 0}, None
    for source, path in tqdm(plan, desc="writing the copy", unit="file", file=sys.stderr, disable=None, leave=False):
        dest = os.path.join(copy_dir, path)
        try:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            how, why = link_or_copy(source, dest, always_copy)
        except FileNotFoundError as e:
            if not os.path.exists(source):
                raise InputError(f"{printable_path(source)}: gone since the folder was listed (or a broken link); "
                                 f"nothing was written: export again") from None
            raise RunError(f"cannot write {printable_path(dest)}: {e.strerror or e}") from None
        except FileExistsError:
            raise RunError(f"two files of the copy would be {printable_path(path)} (does the file system ignore "
                           f"case?); nothing was written") from None
        except OSError as e:
            raise RunError(f"cannot copy {printable_path(source)} to {printable_path(dest)}: "
                           f"{e.strerror or e}") from None
        counts[how] += 1
        refused = refused or why
    return counts, refused


def is_compressed(path):
    """True when an .npz file was written with np.savez_compressed: its copy is written the same way."""
    with zipfile.ZipFile(path) as archive:
        return any(member.compress_type != zipfile.ZIP_STORED for member in archive.infolist())


def npz_arrays(fixed):
    """The arrays of an .npz copy: the images not dropped with their labels after the fixes, the rest as it was."""
    kept = fixed.kept
    arrays = dict(train_images=fixed.train_images[kept], train_labels=fixed.noisy_labels[kept])
    if fixed.clean_labels is not None:
        arrays["clean_labels"] = fixed.clean_labels[kept]
    if fixed.test_images is not None:
        arrays.update(test_images=fixed.test_images, test_labels=fixed.test_labels)
    if fixed.class_names is not None:
        arrays["class_names"] = np.array(fixed.class_names)
    return arrays


def manifest(dataset, source, out, fixed, test_images, moved=None, files=None):
    """What the copy is, JSON-ready: its source, the fixes (file, sha256), the images before and after, the
    relabelled ones per class pair, and every image relabelled (with its place in the copy: `moved` of folder_plan
    for a folder, its position for an .npz file) or dropped; for a folder, `files`: how many hard links and copies.
    Names are written as the tables write them."""
    info, before, after, kept = fixed.label_fixes.info, fixed.labels_on_disk, fixed.noisy_labels, fixed.kept
    names = ([printable_path(c) for c in fixed.class_names] if fixed.class_names
             else [str(k) for k in range(fixed.num_classes)])
    relabelled = np.flatnonzero(kept & (after != before))
    position = np.cumsum(kept) - 1  # of each image kept, in an .npz copy

    def source_image(i):
        if dataset != "folder":
            return {"index": int(i)}
        return {"index": int(i), "file": printable_path(os.path.relpath(fixed.train_files[i], fixed.files_root))}

    def place_in_copy(i):
        return {"copy": printable_path(moved[i])} if dataset == "folder" else {"copy_index": int(position[i])}
    pairs = collections.Counter((names[before[i]], names[after[i]]) for i in relabelled)
    return {
        "made_by": MADE_BY,
        "dataset": dataset,
        "source": printable_path(os.path.abspath(source)),
        "copy": printable_path(os.path.abspath(out)),
        "label_fixes": {"file": printable_path(os.path.abspath(info["path"])), "sha256": info["sha256"],
                        "rows": info["rows"]},
        "class_names": names,
        "training_images": {"source": len(before), "kept": int(kept.sum()), "relabelled": len(relabelled),
                            "dropped": int((~kept).sum())},
        "test_images": test_images,
        "relabelled_per_class_pair": [{"from": a, "to": b, "images": n} for (a, b), n in sorted(pairs.items())],
        **({} if files is None else {"files": {"hard links": files["link"], "copies": files["copy"]}}),
        "relabelled": [{**source_image(i), "from": names[before[i]], "to": names[after[i]], **place_in_copy(i)}
                       for i in relabelled],
        "dropped": [{**source_image(i), "label": names[before[i]]} for i in np.flatnonzero(~kept)],
    }


def write_new(path, write):
    """Call write(binary file) on a file created for it at path (never an existing one: it could be a hard link into
    the original), flushed to disk."""
    try:
        with open(path, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise RunError(f"cannot write {printable_path(path)}: {e.strerror or e}; nothing was written") from None


def json_writer(obj):
    return lambda f: f.write((json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


@contextlib.contextmanager
def work_folder(out):
    """A temporary folder beside out to write the copy in; removed at the end whatever happens (an error, Ctrl-C, a
    SIGTERM the script turns into an exception), with all it still holds. Removing hard links leaves their
    originals as they are."""
    parent = os.path.dirname(os.path.abspath(out))
    try:
        work = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.", suffix=".export")
    except OSError as e:
        raise RunError(f"cannot write into {printable_path(parent)}: {e.strerror or e}") from None
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def put_in_place(work, pairs, overwrite):
    """Rename each (new, dest) of pairs into place. With overwrite, what is at dest (an earlier export) is first moved
    into work, to be removed with it; if a rename fails, every dest is put back as it was."""
    undo = []  # (from, to) renames that restore the state before, newest first
    try:
        for k, (new, dest) in enumerate(pairs):
            if os.path.lexists(dest):
                if not overwrite:  # it appeared while the copy was written
                    raise InputError(f"--out {printable_path(dest)} appeared while the copy was written; nothing was "
                                     f"written: choose another path, or pass --overwrite")
                os.rename(dest, os.path.join(work, f"replaced_{k}"))
                undo.insert(0, (os.path.join(work, f"replaced_{k}"), dest))
        for k, (new, dest) in enumerate(pairs):
            os.rename(new, dest)
            undo.insert(0, (dest, os.path.join(work, f"failed_{k}")))
    except BaseException as e:
        for source, target in undo:
            os.rename(source, target)
        if isinstance(e, OSError):
            raise RunError(f"cannot put the copy in place at {printable_path(pairs[0][1])}: {e.strerror or e}; "
                           f"nothing was written") from None
        raise


def export_folder(root, fixes_path, out, overwrite=False, always_copy=False):
    """Write the copy of the image folder root with the fixes of fixes_path applied to out, with its manifest; (the
    manifest, why hard links were refused or None)."""
    root, out = os.path.normpath(root), os.path.normpath(out)
    check_out(out, root, "folder", overwrite)
    data, test_files = folder_listing(root)
    fixed = apply_label_fixes(data, fixes_path)
    check_every_class_kept(fixed, fixes_path)
    plan, moved = folder_plan(fixed, test_files)
    with work_folder(out) as work:
        copy_dir = os.path.join(work, "copy")
        counts, refused = copy_files(plan, copy_dir, always_copy)
        record = manifest("folder", root, out, fixed, len(test_files), moved, counts)
        write_new(os.path.join(copy_dir, MANIFEST), json_writer(record))
        put_in_place(work, [(copy_dir, out)], overwrite)
    return record, refused


def export_npz(path, fixes_path, out, overwrite=False):
    """Write the .npz copy of the .npz file path with the fixes of fixes_path applied to out, and its manifest beside
    it; the manifest."""
    out = os.path.normpath(out)
    check_out(out, path, "npz", overwrite)
    fixed = apply_label_fixes(load_npz(path), fixes_path)
    check_every_class_kept(fixed, fixes_path)
    record = manifest("npz", path, out, fixed, 0 if fixed.test_labels is None else len(fixed.test_labels))
    save = np.savez_compressed if is_compressed(path) else np.savez
    with work_folder(out) as work:
        new_npz, new_manifest = os.path.join(work, "copy.npz"), os.path.join(work, MANIFEST)
        write_new(new_npz, lambda f: save(f, **npz_arrays(fixed)))
        write_new(new_manifest, json_writer(record))
        put_in_place(work, [(new_npz, out), (new_manifest, manifest_path(out, "npz"))], overwrite)
    return record
