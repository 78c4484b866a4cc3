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

What the export guarantees, on a local Linux file system (ext4, xfs, btrfs, tmpfs; data.placement):
- The original is never written to: --out may not be the source, lie inside it or around it, nor inside or around
  any folder the listing walks, linked class folders included (a copy there would add images to the original).
- Nothing the command did not write is replaced or deleted. --overwrite replaces only an earlier copy that is exactly
  as the command wrote it: a folder whose manifest lists every file it wrote (name, size, modification time) and
  which holds nothing else; an .npz file whose sha256 its manifest records. A file at an .npz copy's manifest path
  that the command did not write is refused, with --overwrite or without; a manifest of this command whose copy is
  gone (moved or deleted) is replaced only with --overwrite. The final renames never replace a path that appeared
  while the copy was written (another export, a file of yours): the export stops and undoes itself.
- Everything is written into a work folder beside the copy (.<name>.<random>.export, with a marker naming the
  command, the process and the host, locked for the export's lifetime), every file and folder flushed to disk, then
  renamed into place by steps written down first, each flushed. An error, Ctrl-C or SIGTERM undoes the steps done
  and removes the work folder; SIGINT and SIGTERM wait while the steps run. The next export to the same path undoes
  the steps of an export killed half-way (SIGKILL, a power loss), once the marker's lock shows that its process is
  gone, and removes its work folder.
- An earlier copy is replaced by one atomic exchange (a SIGKILL at any moment leaves the earlier or the new copy
  complete at --out; an .npz copy and its manifest are two exchanges, and the next export undoes a kill between
  them). Where the file system cannot exchange, the earlier copy is moved into the work folder and the new one
  renamed in: a SIGKILL between the two leaves nothing at --out until the next export puts the earlier copy back.
- Not guaranteed: network file systems (NFS, SMB: locks and renames may not be atomic there), other operating
  systems than Linux (no atomic exchange, and a folder copy goes in by a check and a rename), and a copy whose
  files someone changes while it is written.
numpy and PIL (through data.folder) only."""
import collections
import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import zipfile

import numpy as np
from tqdm import tqdm

from utils import InputError, RunError, printable_path
from .arrays import load_npz
from . import placement
from .dataset import Dataset
from .fixes import apply_label_fixes, file_sha256
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


def file_record(copy_dir):
    """Every file the export wrote under copy_dir but its manifest: [{path (name_fields), size, mtime_ns}], sorted by
    path. A hard link has its original's size and time, a copy the same (shutil.copystat)."""
    record = []
    for rel, st in sorted(tree(copy_dir).items(), key=lambda item: os.fsencode(item[0])):
        if stat.S_ISREG(st.st_mode) and rel != MANIFEST:
            record.append({**name_fields("path", rel), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return record


def tree(root):
    """{path below root: its lstat} of everything under root (links are not followed)."""
    found, folders = {}, [""]
    while folders:
        below = folders.pop()
        with os.scandir(os.path.join(root, below)) as entries:
            for entry in entries:
                rel = os.path.join(below, entry.name)
                found[rel] = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(found[rel].st_mode):
                    folders.append(rel)
    return found


def recorded_name(entry):
    """The name as bytes of an entry of a manifest's lists: its bytes in hex where it was not UTF-8, else its text."""
    return bytes.fromhex(entry["path_bytes_hex"]) if "path_bytes_hex" in entry else entry["path"].encode("utf-8")


def first_difference(out, record):
    """Where the folder out differs from the files an export recorded (record: file_record of its copy): a sentence
    naming the first path that was added, changed or removed since, or None when it holds exactly those files (and
    their folders, and the manifest)."""
    try:
        expected = {recorded_name(e): (e["size"], e["mtime_ns"]) for e in record}
    except (KeyError, TypeError, ValueError, AttributeError):
        return "its manifest's list of files cannot be read"
    folders = {os.path.dirname(name) for name in expected}
    folders |= {parent for name in folders for parent in _parents(name)}
    found = {os.fsencode(rel): st for rel, st in tree(out).items()}
    for name in sorted(set(found) | set(expected)):
        shown = printable_path(os.path.join(out, os.fsdecode(name)))
        st = found.get(name)
        if name not in expected:
            if name == MANIFEST.encode() and stat.S_ISREG(st.st_mode) or name in folders and stat.S_ISDIR(st.st_mode):
                continue
            return f"{shown} was not written by {MADE_BY}"
        if st is None:
            return f"{shown}, written by the export, is gone"
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != expected[name]:
            return f"{shown} changed since the export (its size or modification time)"
    return None


def _parents(name):
    """Every folder above a relative path (as bytes), the top one included, the empty path left out."""
    while name:
        yield name
        name = os.path.dirname(name)


def not_an_export(out, dataset):
    """Why out is not a copy exactly as this command wrote it, in a few words; None when it is one: its manifest is
    there and says so; a folder holds exactly the files its manifest lists, unchanged; an .npz file has the sha256
    its manifest records (a file saved over the copy since is the user's)."""
    record = read_json(manifest_path(out, dataset))
    if not made_here(record):
        return f"no {printable_path(manifest_path(out, dataset))} of it"
    if dataset == "npz":
        try:
            same = record.get("copy_sha256") is not None and file_sha256(out) == record["copy_sha256"]
        except OSError:
            same = False
        return None if same else "its content is not the one its manifest records"
    if "files_written" not in record:
        return f"it was written by an earlier version of {MADE_BY}, whose manifest lists no files"
    return first_difference(out, record["files_written"])


def is_export(out, dataset):
    """True when out is a copy exactly as this command wrote it (not_an_export)."""
    return not_an_export(out, dataset) is None


def in_the_way(out, dataset, overwrite):
    """The paths an export to out replaces (an earlier copy, an .npz copy's manifest), or raises InputError where it
    may replace nothing: out exists (without overwrite), it is not an earlier export exactly as written, the .npz
    manifest's path holds a file this command did not write (never replaced), or a manifest of this command whose
    copy is gone (replaced only with overwrite: it is the only record of where a moved copy came from)."""
    manifest = manifest_path(out, dataset)
    has_manifest = dataset == "npz" and os.path.lexists(manifest)
    if has_manifest and not made_here(read_json(manifest)):
        raise InputError(f"{printable_path(manifest)} exists and was not written by {MADE_BY}; the manifest of --out "
                         f"{printable_path(out)} goes there: move that file away, or choose another path")
    if not os.path.lexists(out):
        if has_manifest and not overwrite:
            raise InputError(f"{printable_path(manifest)} is the manifest of an earlier copy that is no longer at "
                             f"{printable_path(out)} (moved or deleted?); move it away with its copy, or pass "
                             f"--overwrite to replace it")
        return [manifest] if has_manifest else []
    if not overwrite:
        raise InputError(f"--out {printable_path(out)} exists; choose another path, or pass --overwrite to "
                         f"replace it")
    why = not_an_export(out, dataset)
    if why is not None:
        raise InputError(f"--out {printable_path(out)} exists and is not a copy exactly as {MADE_BY} wrote it ({why});"
                         f" --overwrite replaces only those: remove it yourself or choose another path")
    return [out, manifest] if has_manifest else [out]


def check_out(out, source, dataset, overwrite, walked=()):
    """Refuse an --out that would touch the original (the source itself, a path inside it or around it, or inside or
    around a folder its listing walks: `walked`, resolved paths), that has no folder to go into, or whose place is
    taken (in_the_way)."""
    real_out, real_source = os.path.realpath(out), os.path.realpath(source)
    if os.path.commonpath([real_out, real_source]) in (real_out, real_source):
        raise InputError(f"--out {printable_path(out)} is the source {printable_path(source)}, inside it or around "
                         f"it; the copy goes elsewhere, so that the original stays as it is")
    for folder in sorted(walked):
        if os.path.commonpath([real_out, folder]) in (real_out, folder):
            raise InputError(f"--out {printable_path(out)} lies inside or around {printable_path(folder)}, a folder "
                             f"the listing of {printable_path(source)} walks (through a linked folder): the copy "
                             f"would change the original; choose a path outside it")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise InputError(f"--out {printable_path(out)}: there is no folder {printable_path(parent)} to write it "
                         f"into; create it first")
    in_the_way(out, dataset, overwrite)


def folder_listing(root, walked=None):
    """The training set of an image folder as --dataset folder lists it (data.folder.list_folder: the same classes,
    files, labels and checks), without decoding an image: an export copies files, and the loader would write its
    cache into the original. (the Dataset, whose images are empty placeholders, and the test files); the resolved
    path of every folder walked is added to the set `walked`, when given."""
    class_names, train_files, labels, test_files, _ = list_folder(root, walked)
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


def manifest(dataset, source, out, fixed, test_images, moved=None, files=None, copy_sha256=None, files_written=None):
    """What the copy is, JSON-ready: its source, the fixes (file, sha256), the images before and after, the
    relabelled ones per class pair, and every image relabelled (with its place in the copy: `moved` of folder_plan
    for a folder, its position for an .npz file) or dropped; for a folder, `files`: how many hard links and copies;
    for an .npz file, the copy's sha256; for a folder, `files_written` (file_record: every file it wrote, so that
    --overwrite replaces it only as it was written). Names as name_fields writes them: two never give the same fields."""
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
        **({} if files_written is None else {"files_written": files_written}),
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


@contextlib.contextmanager
def leftover(path):
    """The work folder at path, locked for the caller while inside, when it is one of an export that is gone (killed,
    or a power loss): a folder, not a link, whose marker names this command and whose lock no process holds. (A
    marker of an earlier version of this command, which held no lock, counts as gone when its process is gone from
    this host.) None otherwise: a folder without that marker (the user's), that of a running export."""
    if os.path.islink(path) or not os.path.isdir(path):
        yield None
        return
    marker_path = os.path.join(path, WORK_MARKER)
    marker = read_json(marker_path)
    if not made_here(marker):
        yield None
        return
    if marker.get("liveness") != "flock":  # an earlier version's: by its process id on this host
        pid = marker.get("pid")
        gone = (marker.get("host") == socket.gethostname() and type(pid) is int and pid > 0
                and not is_running(pid))  # never 0 or < 0: os.kill would mean a group
        yield path if gone else None
        return
    try:
        fd = os.open(marker_path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        yield None
        return
    try:
        yield path if placement.lock(fd) else None
    finally:
        os.close(fd)


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


def recover_killed_exports(out):
    """Put right what killed exports to out left beside it, in the work folders named as work_folder names them
    (.<name of out>.<random, without a dot>.export) that `leftover` proves to be: the renames of one killed half-way
    undone (an earlier copy back at out, a new manifest without its copy gone), then the work folder removed.
    InputError when a rename cannot be undone (the path now holds something else): the work folder stays."""
    parent, prefix = os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}."
    if not os.path.isdir(parent):
        return
    for name in sorted(os.listdir(parent)):
        random = name[len(prefix):-len(WORK_SUFFIX)]  # a dot in it: the work folder of another name's export
        if not (name.startswith(prefix) and name.endswith(WORK_SUFFIX) and random and "." not in random):
            continue
        with leftover(os.path.join(parent, name)) as work:
            if work is None:
                continue
            try:
                placement.recover(work)
            except OSError as e:
                raise InputError(f"an export to {printable_path(out)} was killed while putting its copy in place, and "
                                 f"undoing it failed ({e.strerror or e}: {printable_path(e.filename or '')}); what it "
                                 f"moved is in {printable_path(work)} (plan.json lists each rename): move things "
                                 f"back by hand, or remove the folder") from None
            remove_work(work)


class Work:
    """A work folder of an export (work_folder): `path`, and `place`, which puts its finished files in place."""

    def __init__(self, path):
        self.path, self.placement, self.deferred, self.caught = path, None, None, []

    def place(self, pairs, aside):
        """Rename each (new path in the work folder, destination) of pairs into place, the paths of `aside`
        (in_the_way) replaced; SIGINT and SIGTERM wait from here until the work folder is gone. A failure undoes
        the renames done and raises RunError (the work folder stays where one cannot be undone)."""
        self.deferred = placement.signals_deferred()
        self.caught = self.deferred.__enter__()
        try:
            self.placement = placement.Placement.plan(self.path, pairs, aside)
            self.placement.run()
        except placement.Stuck as e:
            raise RunError(f"cannot put the copy in place at {printable_path(pairs[-1][1])} ({e.failure}), nor undo "
                           f"what was done ({e.undo_failure}): what it moved is in {printable_path(self.path)}, and "
                           f"the next export to that path puts it back") from None
        except OSError as e:
            taken = isinstance(e, FileExistsError)
            raise RunError(f"cannot put the copy in place at {printable_path(pairs[-1][1])}: " +
                           (f"{printable_path(e.filename2 or e.filename)} appeared while the copy was written (another "
                            f"export?)" if taken else f"{e.strerror or e}") + "; nothing was written") from None

    def stuck(self):
        """True when renames of this export are done in part (an undo failed): the work folder must stay."""
        return self.placement is not None and self.placement.state() == "partial"


@contextlib.contextmanager
def work_folder(out):
    """A temporary folder beside out to write the copy in (a Work), marked as this process's (WORK_MARKER, locked
    for as long as it exists), after putting right what killed exports to out left; removed at the end whatever
    happens (an error, Ctrl-C, a SIGTERM the script turns into an exception), with all it still holds, unless renames
    of it could not be undone. Removing hard links leaves their originals as they are."""
    parent = os.path.dirname(os.path.abspath(out))
    recover_killed_exports(out)
    try:
        work = Work(tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.", suffix=WORK_SUFFIX))
    except OSError as e:
        raise RunError(f"cannot write into {printable_path(parent)}: {e.strerror or e}") from None
    fd = None
    try:
        try:  # locked before it says what it is: a marker that reads as this command's is always locked while alive
            fd = os.open(os.path.join(work.path, WORK_MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            placement.lock(fd)
            marker = {"made_by": MADE_BY, "pid": os.getpid(), "host": socket.gethostname(), "liveness": "flock"}
            os.write(fd, json.dumps(marker).encode())
            os.fsync(fd)
        except OSError as e:
            raise RunError(f"cannot write into {printable_path(work.path)}: {e.strerror or e}") from None
        yield work
    finally:
        try:
            if not work.stuck():
                remove_work(work.path)
        finally:
            if fd is not None:
                os.close(fd)
            if work.deferred is not None:
                work.deferred.__exit__(None, None, None)
                if work.caught and work.placement.state() == "done":  # too late to stop it: say so, and go on
                    print(f"note: signal {work.caught[0]} came while the copy was put in place; the export "
                          f"finished", file=sys.stderr)
                else:  # it was undone: the signal stops the export now, as it would have
                    placement.resend(work.caught)


def export_folder(root, fixes_path, out, overwrite=False, always_copy=False):
    """Write the copy of the image folder root with the fixes of fixes_path applied to out, with its manifest; (the
    manifest, why hard links were refused or None)."""
    root, out = os.path.normpath(root), os.path.normpath(out)
    walked = set()
    data, test_files = folder_listing(root, walked)
    recover_killed_exports(out)
    check_out(out, root, "folder", overwrite, walked)
    fixed = apply_label_fixes(data, fixes_path)
    check_every_class_kept(fixed, fixes_path)
    plan, moved = folder_plan(fixed, test_files)
    with work_folder(out) as work:
        copy_dir = os.path.join(work.path, "copy")
        counts, refused = copy_files(plan, copy_dir, always_copy)
        record = manifest("folder", root, out, fixed, len(test_files), moved, counts, files_written=file_record(copy_dir))
        write_new(os.path.join(copy_dir, MANIFEST), json_writer(record))
        fsync_tree(copy_dir)
        # checked again: what appeared at out while the copy was written
        work.place([(copy_dir, out)], in_the_way(out, "folder", overwrite))
    return record, refused


def export_npz(path, fixes_path, out, overwrite=False):
    """Write the .npz copy of the .npz file path with the fixes of fixes_path applied to out, and its manifest beside
    it; the manifest. The manifest goes in place before the copy: a copy never exists without its manifest."""
    out = os.path.normpath(out)
    recover_killed_exports(out)
    check_out(out, path, "npz", overwrite)
    fixed = apply_label_fixes(load_npz(path), fixes_path)
    check_every_class_kept(fixed, fixes_path)
    save = np.savez_compressed if is_compressed(path) else np.savez
    with work_folder(out) as work:
        new_npz, new_manifest = os.path.join(work.path, "copy.npz"), os.path.join(work.path, MANIFEST)
        write_new(new_npz, lambda f: save(f, **npz_arrays(fixed)))
        record = manifest("npz", path, out, fixed, 0 if fixed.test_labels is None else len(fixed.test_labels),
                          copy_sha256=file_sha256(new_npz))
        write_new(new_manifest, json_writer(record))
        work.place([(new_manifest, manifest_path(out, "npz")), (new_npz, out)], in_the_way(out, "npz", overwrite))
    return record
