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
image relabelled or dropped. A name that is not valid UTF-8 is written as the tables write it (\\xNN) and, beside it,
as its bytes in hex (<field>_bytes_hex), since a name may also contain those four characters itself.

What is on disk at any moment, even after a SIGKILL or a power loss:
- Everything is written into a work folder beside the copy (.<name>.<random>.export, with a marker naming the
  command, the process and the host), every file and folder flushed to disk, then renamed into place (the folder
  above flushed after each rename). An error, Ctrl-C or SIGTERM removes the work folder; the work folder of a killed
  export is removed by the next export to the same path, once its marker proves that its process is gone.
- A folder copy is one rename (its manifest inside). An .npz copy and its manifest are two: the manifest goes in
  first and the copy last (an earlier copy is moved out first), so the copy never exists without its manifest,
  which records the copy's sha256. A kill between the two renames leaves a manifest of this command without its
  copy, which the next export to that path replaces.
- Nothing else is touched: --overwrite replaces only an earlier export (a folder whose manifest says so; an .npz
  file whose manifest says so and records its sha256), and a file at the manifest's path that this command did not
  write is refused, with or without --overwrite.
numpy and PIL (through data.folder) only."""
import collections
import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
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
WORK_MARKER = "made_by.json"  # inside a work folder: the command, process and host that made it
WORK_SUFFIX = ".export"  # of a work folder's name: .<name of the copy>.<random>.export


def manifest_path(out, dataset):
    """Where the manifest of a copy is: inside a folder (it travels with it), beside an .npz file (whose loader
    refuses arrays it does not know)."""
    return os.path.join(out, MANIFEST) if dataset == "folder" else out + ".manifest.json"


def read_json(path):
    """The JSON object in the file at path; None when there is none (no file, a folder, not JSON, not an object)."""
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def made_here(record):
    """True when a manifest or work-folder marker (a JSON object, or None) says this command wrote it."""
    return record is not None and record.get("made_by") == MADE_BY


def file_sha256(path):
    """The sha256 of a file's content; None when it cannot be read (no file, a folder)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def is_export(out, dataset):
    """True when out is a copy this command wrote: its manifest is there and says so; for an .npz file the manifest
    also records the copy's sha256, which must be out's (a file saved over the copy since is the user's)."""
    record = read_json(manifest_path(out, dataset))
    if not made_here(record):
        return False
    return dataset == "folder" or (record.get("copy_sha256") is not None
                                   and file_sha256(out) == record["copy_sha256"])


def in_the_way(out, dataset, overwrite):
    """The paths an export to out must move aside before its own go in (the copy before its manifest). That is
    nothing when out is free; with overwrite, an earlier export; and an .npz manifest of this command without its
    copy (left by an export killed between its two renames: it describes no file, so it goes without overwrite too).
    Anything else raises InputError: out exists (without overwrite), it is not an earlier export, or the .npz
    manifest's path holds a file this command did not write (the user's, never touched, with overwrite or not)."""
    manifest = manifest_path(out, dataset)
    has_manifest = dataset == "npz" and os.path.lexists(manifest)
    if has_manifest and not made_here(read_json(manifest)):
        raise InputError(f"{printable_path(manifest)} exists and was not written by {MADE_BY}; the manifest of --out "
                         f"{printable_path(out)} goes there: move that file away, or choose another path")
    if not os.path.lexists(out):
        return [manifest] if has_manifest else []
    if not overwrite:
        raise InputError(f"--out {printable_path(out)} exists; choose another path, or pass --overwrite to "
                         f"replace it")
    if not is_export(out, dataset):
        raise InputError(f"--out {printable_path(out)} exists and is not a copy written by {MADE_BY} (no "
                         f"{printable_path(manifest)} of it); --overwrite replaces only those: remove it yourself or "
                         f"choose another path")
    return [out, manifest] if has_manifest else [out]


def check_out(out, source, dataset, overwrite):
    """Refuse an --out that would touch the original (the source itself, a path inside it or around it), that has no
    folder to go into, or whose place is taken (in_the_way)."""
    real_out, real_source = os.path.realpath(out), os.path.realpath(source)
    if os.path.commonpath([real_out, real_source]) in (real_out, real_source):
        raise InputError(f"--out {printable_path(out)} is the source {printable_path(source)}, inside it or around "
                         f"it; the copy goes elsewhere, so that the original stays as it is")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise InputError(f"--out {printable_path(out)}: there is no folder {printable_path(parent)} to write it "
                         f"into; create it first")
    in_the_way(out, dataset, overwrite)


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
    original), flushed to disk (a link adds no data to flush). (how, why no link): ("link", None) or ("copy", the
    reason, None when always_copy)."""
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
        dst.flush()
        shutil.copystat(source, dest)
        os.fsync(dst.fileno())  # after copystat: one fsync flushes the content and the times
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


def bytes_hex(name):
    """The bytes of a name in hex when they are not valid UTF-8, else None."""
    raw = os.fsencode(name)
    try:
        raw.decode("utf-8")
        return None
    except UnicodeDecodeError:
        return raw.hex()


def name_fields(key, name):
    """{key: name as the tables write it}, and for a name that is not valid UTF-8 {key_bytes_hex: its bytes} too: its
    \\xNN escapes could also be a name's own four characters (a file named caf\\xe9.png), its bytes cannot."""
    raw_hex = bytes_hex(name)
    return {key: printable_path(name), **({} if raw_hex is None else {f"{key}_bytes_hex": raw_hex})}


def manifest(dataset, source, out, fixed, test_images, moved=None, files=None, copy_sha256=None):
    """What the copy is, JSON-ready: its source, the fixes (file, sha256), the images before and after, the
    relabelled ones per class pair, and every image relabelled (with its place in the copy: `moved` of folder_plan
    for a folder, its position for an .npz file) or dropped; for a folder, `files`: how many hard links and copies;
    for an .npz file, the copy's sha256. Names as name_fields writes them: two names never give the same fields."""
    info, before, after, kept = fixed.label_fixes.info, fixed.labels_on_disk, fixed.noisy_labels, fixed.kept
    names = fixed.class_names or [str(k) for k in range(fixed.num_classes)]
    names_hex = [bytes_hex(c) for c in names]
    relabelled = np.flatnonzero(kept & (after != before))
    position = np.cumsum(kept) - 1  # of each image kept, in an .npz copy

    def source_image(i):
        if dataset != "folder":
            return {"index": int(i)}
        return {"index": int(i), **name_fields("file", os.path.relpath(fixed.train_files[i], fixed.files_root))}

    def place_in_copy(i):
        return name_fields("copy", moved[i]) if dataset == "folder" else {"copy_index": int(position[i])}

    def classes(i):
        return {**name_fields("from", names[before[i]]), **name_fields("to", names[after[i]])}
    pairs = collections.Counter((int(before[i]), int(after[i])) for i in relabelled)  # by index: names may look alike
    return {
        "made_by": MADE_BY,
        "dataset": dataset,
        **name_fields("source", os.path.abspath(source)),
        **name_fields("copy", os.path.abspath(out)),
        **({} if copy_sha256 is None else {"copy_sha256": copy_sha256}),
        "label_fixes": {**name_fields("file", os.path.abspath(info["path"])), "sha256": info["sha256"],
                        "rows": info["rows"]},
        "class_names": [printable_path(c) for c in names],
        **({"class_names_bytes_hex": names_hex} if any(names_hex) else {}),
        "training_images": {"source": len(before), "kept": int(kept.sum()), "relabelled": len(relabelled),
                            "dropped": int((~kept).sum())},
        "test_images": test_images,
        "relabelled_per_class_pair": [{**name_fields("from", names[a]), **name_fields("to", names[b]), "images": n}
                                      for (a, b), n in sorted(pairs.items())],
        **({} if files is None else {"files": {"hard links": files["link"], "copies": files["copy"]}}),
        "relabelled": [{**source_image(i), **classes(i), **place_in_copy(i)} for i in relabelled],
        "dropped": [{**source_image(i), **name_fields("label", names[before[i]])} for i in np.flatnonzero(~kept)],
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


def fsync_folder(path):
    """Flush a folder's entries (the names in it) to disk: a flushed file is lost on a power loss if its name is."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root):
    """Flush every folder under root, root included, to disk (their files are flushed as they are written)."""
    for folder, _, _ in os.walk(root):
        try:
            fsync_folder(folder)
        except OSError as e:
            raise RunError(f"cannot write {printable_path(folder)}: {e.strerror or e}; nothing was written") from None


def is_running(pid):
    """True unless no process pid runs on this machine (one of another user's counts as running)."""
    try:
        os.kill(pid, 0)  # signal 0 sends nothing: it only asks whether the process is there
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it is there, another user's
        pass
    return True


def is_leftover(path):
    """True when path is the work folder of an export whose process is gone (killed, or a power loss): a folder, not
    a link, whose marker names this command, this host and a process id that no longer runs. A folder without that
    marker (the user's), that of a running export or of another host (whose processes cannot be seen) is not."""
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    marker = read_json(os.path.join(path, WORK_MARKER))
    if not made_here(marker) or marker.get("host") != socket.gethostname():
        return False
    pid = marker.get("pid")
    return type(pid) is int and pid > 0 and not is_running(pid)  # never 0 or < 0: os.kill would mean a group


def remove_work(work):
    """Remove a work folder with all it holds, its marker last: an export killed in the middle leaves it marked, for
    the next one to remove. What cannot be removed stays (and the marker with it)."""
    marker = os.path.join(work, WORK_MARKER)
    with contextlib.suppress(OSError):
        for path in (os.path.join(work, name) for name in os.listdir(work)):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif path != marker:
                os.remove(path)
        if os.path.lexists(marker):  # not there when writing it failed
            os.remove(marker)
        os.rmdir(work)


def remove_leftovers(out):
    """Remove the work folders that killed exports to out left beside it: those named as work_folder names them
    (.<name of out>.<random, without a dot>.export) that is_leftover proves to be."""
    parent, prefix = os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}."
    for name in os.listdir(parent):
        random = name[len(prefix):-len(WORK_SUFFIX)]  # a dot in it: the work folder of another name's export
        if (name.startswith(prefix) and name.endswith(WORK_SUFFIX) and random and "." not in random
                and is_leftover(os.path.join(parent, name))):
            remove_work(os.path.join(parent, name))


@contextlib.contextmanager
def work_folder(out):
    """A temporary folder beside out to write the copy in, marked as this process's (WORK_MARKER), after removing
    those of killed exports to out; removed at the end whatever happens (an error, Ctrl-C, a SIGTERM the script turns
    into an exception), with all it still holds. Removing hard links leaves their originals as they are."""
    parent = os.path.dirname(os.path.abspath(out))
    try:
        remove_leftovers(out)
        work = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.", suffix=WORK_SUFFIX)
    except OSError as e:
        raise RunError(f"cannot write into {printable_path(parent)}: {e.strerror or e}") from None
    try:
        marker = {"made_by": MADE_BY, "pid": os.getpid(), "host": socket.gethostname()}
        write_new(os.path.join(work, WORK_MARKER), json_writer(marker))
        yield work
    finally:
        remove_work(work)


def put_in_place(work, pairs, aside):
    """Move each path of aside (in_the_way) into work, to be removed with it, then rename each (new, dest) of pairs
    into place in order, flushing the folder after each rename so that the renames also reach the disk in that order.
    If a rename fails, everything is put back as it was."""
    undo = []  # (from, to) renames that restore the state before, newest first
    try:
        for k, path in enumerate(aside):
            os.rename(path, os.path.join(work, f"replaced_{k}"))
            undo.insert(0, (os.path.join(work, f"replaced_{k}"), path))
        for k, (new, dest) in enumerate(pairs):
            os.rename(new, dest)
            undo.insert(0, (dest, os.path.join(work, f"failed_{k}")))
            fsync_folder(os.path.dirname(os.path.abspath(dest)))
    except BaseException as e:
        for source, target in undo:
            os.rename(source, target)
        if isinstance(e, OSError):
            raise RunError(f"cannot put the copy in place at {printable_path(pairs[-1][1])}: {e.strerror or e}; "
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
        fsync_tree(copy_dir)
        # checked again: what appeared at out while the copy was written
        put_in_place(work, [(copy_dir, out)], in_the_way(out, "folder", overwrite))
    return record, refused


def export_npz(path, fixes_path, out, overwrite=False):
    """Write the .npz copy of the .npz file path with the fixes of fixes_path applied to out, and its manifest beside
    it; the manifest. The manifest goes in place before the copy: a copy never exists without its manifest."""
    out = os.path.normpath(out)
    check_out(out, path, "npz", overwrite)
    fixed = apply_label_fixes(load_npz(path), fixes_path)
    check_every_class_kept(fixed, fixes_path)
    save = np.savez_compressed if is_compressed(path) else np.savez
    with work_folder(out) as work:
        new_npz, new_manifest = os.path.join(work, "copy.npz"), os.path.join(work, MANIFEST)
        write_new(new_npz, lambda f: save(f, **npz_arrays(fixed)))
        record = manifest("npz", path, out, fixed, 0 if fixed.test_labels is None else len(fixed.test_labels),
                          copy_sha256=file_sha256(new_npz))
        write_new(new_manifest, json_writer(record))
        put_in_place(work, [(new_manifest, manifest_path(out, "npz")), (new_npz, out)],
                     in_the_way(out, "npz", overwrite))
    return record
