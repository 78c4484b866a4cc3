"""A fixed copy of a data set (export_fixed_data.py, data/export.py): folder and .npz copies carry the labels of
--label_fixes image by image (hostile and non-UTF-8 names included), the original stays byte-identical, failed,
interrupted, killed and repeated exports leave nothing half written and nothing in the way of the next one, nothing
the command did not write is ever replaced, everything written is flushed to disk, every bad input is one line with
exit code 2, and the copies of a run's reviewed fixes train."""
import collections
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import data.export as export
import data.placement as placement
from data import load_dataset
from data.fixes import apply_label_fixes, drop_row, fix_row, write_label_fixes
from export_fixed_data import cli
from tests.conftest import ROOT, run, script_env
from tests.test_own_data import save_image, write_folder, write_noisy_folder
from utils import printable_path
from utils.label_issues import in_dataset_order, read_label_issues

HOSTILE = "<img src=x onerror=alert(1)>.png"
QUOTED = "it's a \"quoted\" name.png"
CAFE = os.fsdecode(b"caf\xe9")  # a class folder whose name is not UTF-8 (Python holds the byte as a surrogate)
NOT_UTF8 = os.fsdecode(b"\xff\xfe photo.png")


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def snapshot(root):
    """{path below root, as bytes: sha256 of a file's content, or what else it is} of everything under root, hidden
    files included: equal snapshots mean a byte-identical tree."""
    found, root = {}, os.fsencode(root)
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(parent, name)
            mode = os.lstat(path).st_mode
            found[os.path.relpath(path, root)] = sha(path) if stat.S_ISREG(mode) else stat.S_IFMT(mode)
    return found


def leftovers(parent):
    """The export's temporary folders left in parent (there must be none)."""
    return [name for name in os.listdir(parent) if name.endswith(".export")]


def by_content(files, labels):
    """{sha256 of the file: label}: a copy's files are matched to the original's by their content, since a relabelled
    image changes folder (and maybe name) and the order of the files changes with it."""
    return {sha(f): int(label) for f, label in zip(files, labels)}


def hostile_folder(root):
    """Three classes: cat, dog house (a space) and CAFE (not UTF-8), each with 0.png, 1.png, 2.png, so a relabelled
    image's name is taken in its new folder; in cat, hostile names and a nested folder; a test set. Returns the path
    of each training image of interest, by a short name."""
    write_folder(root, ["cat", "dog house", CAFE], n=3)
    write_folder(root, ["cat", "dog house"], split="test", n=1, seed=1)
    cat = os.path.join(root, "train", "cat")
    os.rename(os.path.join(cat, "1.png"), os.path.join(cat, HOSTILE))
    os.rename(os.path.join(cat, "2.png"), os.path.join(cat, QUOTED))
    save_image(os.path.join(cat, "sub dir", "0.png"), np.full((10, 12, 3), 7, np.uint8))
    os.rename(os.path.join(root, "train", CAFE, "2.png"), os.path.join(root, "train", CAFE, NOT_UTF8))
    return {"cat/0": os.path.join(cat, "0.png"), "hostile": os.path.join(cat, HOSTILE),
            "quoted": os.path.join(cat, QUOTED), "nested": os.path.join(cat, "sub dir", "0.png"),
            "not utf8": os.path.join(root, "train", CAFE, NOT_UTF8),
            "dog/1": os.path.join(root, "train", "dog house", "1.png"),
            "dog/2": os.path.join(root, "train", "dog house", "2.png")}


def review_row(data, path, action, new_class=None):
    """A row of label_fixes.csv as review.html writes it: the file as the tables write it (absolute, non-UTF-8 bytes
    as \\xNN), the label on disk, the new class's index."""
    i = data.train_files.index(str(path))
    new = "" if new_class is None else data.class_names.index(new_class)
    return i, printable_path(data.train_files[i]), int(data.noisy_labels[i]), action, new


def hostile_fixes(data, files, path):
    write_label_fixes(path, [review_row(data, files["cat/0"], "relabel", "dog house"),  # 0.png is taken there
                             review_row(data, files["hostile"], "relabel", CAFE),
                             review_row(data, files["quoted"], "relabel", "dog house"),
                             review_row(data, files["nested"], "relabel", "dog house"),
                             review_row(data, files["not utf8"], "relabel", "cat"),
                             review_row(data, files["dog/1"], "drop"),
                             review_row(data, files["dog/2"], "keep")])
    return str(path)


def write_fixes(tmp_path, *rows, name="fixes.csv"):
    """A fixes file with the header and these rows."""
    path = tmp_path / name
    path.write_text("index,file,given_label,action,new_label\n" + "".join(row + "\n" for row in rows))
    return path


def pets(tmp_path):
    """A small folder with a test set and fixes for it: (folder, fixes file, --out)."""
    root = tmp_path / "pets"
    write_folder(root, ["cat", "dog", "frog"], n=3)
    write_folder(root, ["cat", "dog"], split="test", n=1)
    fixes = write_fixes(tmp_path, f"0,{root}/train/cat/0.png,0,relabel,1", "4,,1,drop,", "7,train/frog/1.png,2,keep,")
    return str(root), str(fixes), str(tmp_path / "pets_fixed")


def export_args(root, fixes, out, *more):
    return ["--dataset", "folder", "--data_dir", root, "--label_fixes", fixes, "--out", out, *more]


def small_npz(tmp_path):
    """A 4-image .npz file, fixes for it (none) and --out beside it: (file, fixes file, --out)."""
    path = str(tmp_path / "a.npz")
    np.savez(path, train_images=np.zeros((4, 8, 8, 3), np.uint8), train_labels=np.arange(4) % 2)
    return path, str(write_fixes(tmp_path)), str(tmp_path / "b.npz")


def npz_args(path, fixes, out, *more):
    return ["--dataset", "npz", "--data_dir", path, "--label_fixes", fixes, "--out", out, *more]


def manifest_name(entry, key):
    """The bytes of a name in a manifest entry: those of key_bytes_hex where it is there, else key's text."""
    raw_hex = entry.get(f"{key}_bytes_hex")
    return entry[key].encode() if raw_hex is None else bytes.fromhex(raw_hex)


# ---------------------------------------------------------------------------- folders
def test_folder_copy_has_the_labels_of_label_fixes(tmp_path, capsys):
    root, out = str(tmp_path / "pets"), str(tmp_path / "pets fixed")
    files = hostile_folder(root)
    original = load_dataset("folder", "given", root, image_size=8)  # as --label_fixes sees it; writes the cache
    fixes = hostile_fixes(original, files, tmp_path / "label_fixes.csv")
    fixed = apply_label_fixes(original, fixes)
    before = snapshot(root)

    assert cli(["--dataset", "folder", "--data_dir", root, "--label_fixes", fixes, "--out", out]) == 0
    printed = capsys.readouterr()
    assert snapshot(root) == before and not leftovers(tmp_path)  # the original as it was, byte for byte
    copy = load_dataset("folder", "given", out, image_size=8)
    assert copy.class_names == original.class_names == (CAFE, "cat", "dog house")
    kept = fixed.kept
    expected = by_content(np.array(original.train_files)[kept], fixed.noisy_labels[kept])
    assert by_content(copy.train_files, copy.noisy_labels) == expected and len(copy.train_files) == kept.sum() == 9
    images = dict(zip(map(sha, original.train_files), original.train_images))
    assert all(np.array_equal(images[sha(f)], image) for f, image in zip(copy.train_files, copy.train_images))
    assert np.array_equal(copy.test_images, original.test_images) and np.array_equal(copy.test_labels,
                                                                                      original.test_labels)
    assert snapshot(root) == before  # loading the copy wrote its own cache there, not through a link

    below = {os.fsencode(os.path.relpath(f, out)) for f in copy.train_files}  # the names' real bytes
    assert {b"train/dog house/0_from_cat.png", b"train/dog house/sub dir/0.png", b"train/caf\xe9/" + HOSTILE.encode(),
            b"train/dog house/" + QUOTED.encode(), b"train/cat/\xff\xfe photo.png"} <= below
    assert b"train/dog house/1.png" not in below and b"train/dog house/2.png" in below  # dropped; kept
    assert sorted(os.listdir(out)) == [".bkd_cache_8px.npz", "manifest.json", "test", "train"]  # no cache copied
    linked = os.path.join("train", "dog house", "0.png")  # the same file under a second name
    assert os.stat(os.path.join(out, linked)).st_ino == os.stat(os.path.join(root, linked)).st_ino

    m = json.loads(open(os.path.join(out, "manifest.json"), encoding="utf-8").read())
    assert m["made_by"] == "export_fixed_data.py" and m["source"] == root and m["copy"] == out
    assert m["label_fixes"] == {"file": fixes, "sha256": sha(fixes), "rows": 7}
    assert m["training_images"] == {"source": 10, "kept": 9, "relabelled": 5, "dropped": 1} and m["test_images"] == 2
    cafe = b"caf\xe9".hex()  # a name not UTF-8: its bytes beside its text (which a name could spell itself)
    assert m["class_names"] == ["caf\\xe9", "cat", "dog house"] and m["class_names_bytes_hex"] == [cafe, None, None]
    assert m["relabelled_per_class_pair"] == [{"from": "caf\\xe9", "from_bytes_hex": cafe, "to": "cat", "images": 1},
                                              {"from": "cat", "to": "caf\\xe9", "to_bytes_hex": cafe, "images": 1},
                                              {"from": "cat", "to": "dog house", "images": 3}]
    assert m["files"] == {"hard links": 11, "copies": 0}
    assert {"index": original.train_files.index(files["cat/0"]), "file": "train/cat/0.png", "from": "cat",
            "to": "dog house", "copy": "train/dog house/0_from_cat.png"} in m["relabelled"]
    assert {"index": original.train_files.index(files["not utf8"]), "file": "train/caf\\xe9/\\xff\\xfe photo.png",
            "file_bytes_hex": b"train/caf\xe9/\xff\xfe photo.png".hex(), "from": "caf\\xe9", "from_bytes_hex": cafe,
            "to": "cat", "copy": "train/cat/\\xff\\xfe photo.png",
            "copy_bytes_hex": b"train/cat/\xff\xfe photo.png".hex()} in m["relabelled"]
    assert m["dropped"] == [{"index": original.train_files.index(files["dog/1"]), "file": "train/dog house/1.png",
                             "label": "dog house"}]
    assert "5 relabelled (cat -> dog house 3, caf\\xe9 -> cat 1, cat -> caf\\xe9 1), 1 dropped, 9 training images " \
           "kept" in printed.out and "11 hard links to the original files" in printed.out and printed.err == ""


def test_names_taken_in_the_new_class_folder_get_the_old_class(tmp_path):
    """0.png moves from a and from b into c, which has its own 0.png: the first mover gets _from_a, the second
    _from_b; a mover whose renamed name is taken too gets _2."""
    root = tmp_path / "d"
    write_folder(root, ["a", "b", "c"], n=1)
    write_folder(root, ["c"], n=1, seed=1, split="train/c/x")  # train/c/x/c/0.png
    save_image(f"{root}/train/c/0_from_a.png", np.zeros((4, 4, 3), np.uint8))
    data, _ = export.folder_listing(str(root))
    fixed = apply_label_fixes(data, str(write_fixes(tmp_path, "0,,0,relabel,2", "1,,1,relabel,2")))
    plan, moved = export.folder_plan(fixed, [])
    assert moved == {0: "train/c/0_from_a_2.png", 1: "train/c/0_from_b.png"}
    assert sorted(path for _, path in plan) == ["train/c/0.png", "train/c/0_from_a.png", "train/c/0_from_a_2.png",
                                                "train/c/0_from_b.png", "train/c/x/c/0.png"]


def test_names_that_only_look_alike_stay_apart_in_the_manifest(tmp_path):
    """A name with the four characters \\xe9 in it and one with the byte 0xe9 (not UTF-8) are written alike as
    text; the manifest tells them apart by the bytes it writes beside a name that is not UTF-8."""
    root = tmp_path / "d"
    look_alikes = ["caf\\xe9", os.fsdecode(b"caf\xe9")]
    write_folder(root, look_alikes, n=1)
    for cls in look_alikes:
        for name in look_alikes:
            save_image(os.path.join(root, "train", cls, name + ".png"), np.zeros((4, 4, 3), np.uint8))
    data, _ = export.folder_listing(str(root))
    index = {(cls, name): data.train_files.index(os.path.join(root, "train", cls, name + ".png"))
         for cls in look_alikes for name in look_alikes}
    a, b = (data.class_names.index(cls) for cls in look_alikes)
    fixes = write_fixes(tmp_path, *sorted([f"{index[look_alikes[0], name]},,{a},relabel,{b}" for name in look_alikes] +
                                          [f"{index[look_alikes[1], name]},,{b},drop," for name in look_alikes]))
    out = str(tmp_path / "fixed")
    assert cli(export_args(str(root), str(fixes), out)) == 0
    m = json.loads(open(os.path.join(out, "manifest.json"), encoding="utf-8").read())

    def real(path):
        return os.fsencode(os.path.relpath(path, root))
    hexes = m.get("class_names_bytes_hex", [None] * 2)
    assert [t.encode() if h is None else bytes.fromhex(h) for t, h in zip(m["class_names"], hexes)] == \
        list(map(os.fsencode, data.class_names))
    assert sorted(manifest_name(e, "file") for e in m["relabelled"] + m["dropped"]) == sorted(
        real(data.train_files[k]) for k in index.values())  # four names, four different entries
    for e in m["relabelled"]:
        assert (manifest_name(e, "from"), manifest_name(e, "to")) == tuple(map(os.fsencode, look_alikes))
        assert os.path.isfile(os.path.join(os.fsencode(out), manifest_name(e, "copy")))
    assert all(manifest_name(e, "label") == os.fsencode(look_alikes[1]) for e in m["dropped"])
    pair, = m["relabelled_per_class_pair"]
    assert (manifest_name(pair, "from"), manifest_name(pair, "to"), pair["images"]) == (
        *map(os.fsencode, look_alikes), 2)


@pytest.mark.parametrize("how", ["links refused", "--copy"])
def test_copies_where_links_are_refused_or_unwanted(tmp_path, monkeypatch, capsys, how):
    root, fixes, out = pets(tmp_path)
    if how == "links refused":  # another file system
        def refuse(source, dest):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        monkeypatch.setattr(os, "link", refuse)
    assert cli(export_args(root, fixes, out, *(["--copy"] if how == "--copy" else []))) == 0
    printed = capsys.readouterr().out
    assert (f"written: {out}: 10 copies" + (" (the file system refused hard links: Invalid cross-device link)"
                                            if how == "links refused" else ";")) in printed
    assert json.loads(open(os.path.join(out, "manifest.json")).read())["files"] == {"hard links": 0, "copies": 10}
    source, copy = os.path.join(root, "train", "cat", "1.png"), os.path.join(out, "train", "cat", "1.png")
    assert sha(source) == sha(copy) and os.stat(source).st_ino != os.stat(copy).st_ino
    assert os.stat(source).st_mtime_ns == os.stat(copy).st_mtime_ns


# ---------------------------------------------------------------------------- .npz files
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_copy_has_the_labels_of_label_fixes(tmp_path, compressed, capsys):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), np.arange(20) % 4
    clean = labels.copy()
    clean[[1, 6]] = 0
    path, out = str(tmp_path / "mine.npz"), str(tmp_path / "mine fixed.npz")
    (np.savez_compressed if compressed else np.savez)(
        path, train_images=images, train_labels=labels.astype(np.int32), clean_labels=clean,
        test_images=images[:5], test_labels=labels[:5], class_names=np.array(["ant", "bee", "cow", "dog"]))
    fixes = str(write_fixes(tmp_path, "1,,1,relabel,0", "6,,2,relabel,0", "3,,3,drop,", "4,,0,keep,", "9,,1,drop,"))
    before = sha(path)

    assert cli(["--dataset", "npz", "--data_dir", path, "--label_fixes", fixes, "--out", out]) == 0
    assert sha(path) == before and not leftovers(tmp_path)
    fixed = apply_label_fixes(load_dataset("npz", "given", path), fixes)
    copy = load_dataset("npz", "given", out)
    kept = fixed.kept
    assert np.array_equal(copy.train_images, images[kept]) and np.array_equal(copy.noisy_labels,
                                                                             fixed.noisy_labels[kept])
    assert np.array_equal(copy.clean_labels, clean[kept]) and copy.noise_or_not.sum() == 0  # the two wrong, fixed
    assert np.array_equal(copy.test_images, images[:5]) and np.array_equal(copy.test_labels, labels[:5])
    assert copy.class_names == ("ant", "bee", "cow", "dog") and export.is_compressed(out) == compressed
    m = json.loads(open(out + ".manifest.json", encoding="utf-8").read())
    assert m["training_images"] == {"source": 20, "kept": 18, "relabelled": 2, "dropped": 2} and m["test_images"] == 5
    assert m["relabelled"] == [{"index": 1, "from": "bee", "to": "ant", "copy_index": 1},
                               {"index": 6, "from": "cow", "to": "ant", "copy_index": 5}]  # 3 dropped before it
    assert m["dropped"] == [{"index": 3, "label": "dog"}, {"index": 9, "label": "bee"}] and "files" not in m
    assert sorted(os.listdir(tmp_path)) == ["fixes.csv", "mine fixed.npz", "mine fixed.npz.manifest.json", "mine.npz"]
    assert f"written: {out} (the dropped images left out" in capsys.readouterr().out


# (what is at --out, what is at --out.manifest.json, --overwrite): the one-line error, or None where the export goes
# ahead. "own": a file of the user's; "export": an earlier export's (its copy or its manifest).
NPZ_OUT = [("none", "own", True, "b.npz.manifest.json exists and was not written by export_fixed_data.py"),
           ("none", "own", False, "b.npz.manifest.json exists and was not written by export_fixed_data.py"),
           ("own", "own", True, "b.npz.manifest.json exists and was not written by export_fixed_data.py"),
           ("export", "own", True, "b.npz.manifest.json exists and was not written by export_fixed_data.py"),
           ("own", "none", True, "b.npz exists and is not a copy exactly as export_fixed_data.py wrote it (no "),
           ("export", "none", True, "b.npz exists and is not a copy exactly as export_fixed_data.py wrote it (no "),
           ("own", "export", True, "b.npz exists and is not a copy exactly as export_fixed_data.py wrote it (its "
                                   "content is not the one its manifest records)"),  # saved over it
           ("export", "export", False, "b.npz exists; choose another path, or pass --overwrite to replace it"),
           # the manifest of a copy that is gone (mv b.npz v2.npz): its only record, replaced only when asked
           ("none", "export", False, "b.npz.manifest.json is the manifest of an earlier copy that is no longer at "),
           ("none", "export", True, None),
           ("export", "export", True, None),
           ("none", "none", False, None)]


@pytest.mark.parametrize("copy, manifest, overwrite, error", NPZ_OUT)
def test_an_npz_export_replaces_only_its_own_files(tmp_path, capsys, copy, manifest, overwrite, error):
    path, fixes, out = small_npz(tmp_path)
    if "export" in (copy, manifest):
        assert cli(npz_args(path, fixes, out)) == 0
    for what, at in ((copy, out), (manifest, out + ".manifest.json")):
        if what != "export" and os.path.lexists(at):
            os.remove(at)
    if copy == "own":
        np.savez(out, mine=np.arange(3))
    if manifest == "own":
        (tmp_path / "b.npz.manifest.json").write_text("my notes on b.npz\n")
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = cli(npz_args(path, fixes, out, *(["--overwrite"] if overwrite else [])))
    err = capsys.readouterr().err
    if error:
        assert code == 2 and err.count("\n") == 1 and error in err, err
        assert snapshot(tmp_path) == before  # nothing written, nothing removed
    else:
        assert code == 0 and export.is_export(out, "npz") and not leftovers(tmp_path), err
        assert json.loads(open(out + ".manifest.json").read())["copy_sha256"] == sha(out)


# ---------------------------------------------------------------------------- the original, and what is the user's
@pytest.mark.parametrize("where", ["inside the linked folder", "around it"])
def test_an_out_inside_or_around_a_linked_class_folder_is_refused(tmp_path, capsys, where):
    """The listing follows linked folders: a copy inside a class folder's link target would add images to the original
    (3 cat images became 9 before), and replacing a copy that holds a link target would change the original's class."""
    root, fixes, out = pets(tmp_path)
    store = tmp_path / "store" / "cat"
    shutil.move(f"{root}/train/cat", store)
    os.symlink(store, f"{root}/train/cat")
    out = str(store / "fixed") if where == "inside the linked folder" else str(tmp_path / "store")
    before = snapshot(tmp_path)
    original = export.folder_listing(root)[0].train_files
    assert cli(export_args(root, fixes, out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out} lies inside or around {store}, a folder the listing of {root} " \
                                      f"walks (through a linked folder)" in err, err
    assert snapshot(tmp_path) == before and export.folder_listing(root)[0].train_files == original


def test_a_folder_linked_into_itself_is_listed_once(tmp_path):
    """A link back to a folder it lies in is not followed (the listing would never end), and is no reason to refuse."""
    root, fixes, out = pets(tmp_path)
    os.symlink(".", f"{root}/train/cat/again")
    assert len(export.folder_listing(root)[0].train_files) == 9
    assert cli(export_args(root, fixes, out)) == 0 and len(load_dataset("folder", "given", out, 8).train_files) == 8


CHANGES = {  # what a user did to a copy: (how, the path the refusal names, below the copy)
    "a note added": (lambda out: open(f"{out}/NOTES.txt", "w").write("checked by hand\n"), "NOTES.txt"),
    "an image added": (lambda out: save_image(f"{out}/train/dog/new.png", np.zeros((4, 4, 3), np.uint8)),
                       "train/dog/new.png"),
    "the loader's cache": (lambda out: load_dataset("folder", "given", out, image_size=8), ".bkd_cache_8px.npz"),
    "a folder added": (lambda out: os.mkdir(f"{out}/train/dog/keep"), "train/dog/keep"),
    "a link added": (lambda out: os.symlink("/", f"{out}/train/root"), "train/root"),
    "an image changed": (lambda out: open(f"{out}/train/cat/1.png", "ab").write(b"\0"), "train/cat/1.png"),
    "an image removed": (lambda out: os.remove(f"{out}/train/cat/1.png"), "train/cat/1.png"),
    "an image replaced by a folder": (lambda out: (os.remove(f"{out}/train/cat/1.png"),
                                                   os.mkdir(f"{out}/train/cat/1.png")), "train/cat/1.png")}


@pytest.mark.parametrize("change", CHANGES)
def test_overwrite_refuses_a_copy_that_is_not_as_written(tmp_path, capsys, change):
    """--overwrite replaces a folder copy only as the export wrote it: a file of the user's added to it (before, the
    next export deleted it), anything changed or removed in it, is refused with exit code 2, naming the first
    difference, and the copy stays as it is."""
    root, fixes, out = pets(tmp_path)
    assert cli(export_args(root, fixes, out)) == 0
    how, name = CHANGES[change]
    how(out)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert cli(export_args(root, fixes, out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out} exists and is not a copy exactly as export_fixed_data.py wrote it " \
                                      f"({out}/{name}" in err, err
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


@pytest.mark.parametrize("manifest", ["copied into a folder of the user's", "of an earlier version"])
def test_overwrite_refuses_a_folder_whose_manifest_cannot_vouch_for_it(tmp_path, capsys, manifest):
    """A folder holding a copy of an export's manifest.json, and a copy of an earlier version (whose manifest lists
    no files), are not replaced."""
    root, fixes, out = pets(tmp_path)
    assert cli(export_args(root, fixes, out)) == 0
    if manifest == "copied into a folder of the user's":
        mine = tmp_path / "mine"
        write_folder(mine, ["cat"], n=1)
        shutil.copy(f"{out}/manifest.json", mine)
        out, reason = str(mine), f"({mine}/test/cat/0.png, written by the export, is gone)"
    else:
        record = json.loads(open(f"{out}/manifest.json").read())
        del record["files_written"]
        open(f"{out}/manifest.json", "w").write(json.dumps(record))
        reason = "(it was written by an earlier version of export_fixed_data.py, whose manifest lists no files)"
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert cli(export_args(root, fixes, out, "--overwrite")) == 2 and reason in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_the_manifest_of_a_moved_copy_is_kept(tmp_path, capsys):
    """After `mv b.npz v2.npz`, b.npz.manifest.json is the only record of where v2.npz came from: the next export to
    b.npz refuses instead of deleting it, and replaces it only with --overwrite."""
    path, fixes, out = small_npz(tmp_path)
    assert cli(npz_args(path, fixes, out)) == 0
    os.rename(out, tmp_path / "v2.npz")
    record = sha(out + ".manifest.json")
    capsys.readouterr()
    assert cli(npz_args(path, fixes, out)) == 2 and sha(out + ".manifest.json") == record
    assert f"{out}.manifest.json is the manifest of an earlier copy that is no longer at {out} (moved or deleted?)" \
           in capsys.readouterr().err
    assert cli(npz_args(path, fixes, out, "--overwrite")) == 0 and export.is_export(out, "npz")


@pytest.mark.parametrize("dataset", ["folder", "npz"])
def test_a_path_taken_while_the_copy_is_written_is_never_replaced(tmp_path, monkeypatch, capsys, dataset, renames):
    """The last check that --out is free comes before the renames: a file that appears in between (another export to
    the same path, a file of the user's) makes the rename fail instead of being replaced (a plain rename replaced
    it), and the export undoes itself: the user's file as it was, no manifest of the export, no work folder."""
    if dataset == "folder":
        root, fixes, out = pets(tmp_path)
        argv = export_args(root, fixes, out)
    else:
        path, fixes, out = small_npz(tmp_path)
        argv = npz_args(path, fixes, out)
    real_run = placement.Placement.run

    def someone_else_writes_out_first(self):
        with open(out, "w") as f:
            f.write("theirs")
        real_run(self)
    monkeypatch.setattr(placement.Placement, "run", someone_else_writes_out_first)
    assert cli(argv) == 1
    assert f"error: cannot put the copy in place at {out}: {out} appeared while the copy was written (another " \
           f"export?); nothing was written" in capsys.readouterr().err
    assert open(out).read() == "theirs" and not os.path.lexists(out + ".manifest.json") and not leftovers(tmp_path)


@pytest.mark.parametrize("dataset", ["folder", "npz"])
def test_relative_paths(tmp_path, monkeypatch, dataset, renames):
    """The paths as a user types them, relative to the current folder: a new copy, then one replacing it."""
    monkeypatch.chdir(tmp_path)
    if dataset == "folder":
        pets(tmp_path)
        argv = export_args("pets", "fixes.csv", "pets_fixed")
    else:
        small_npz(tmp_path)
        argv = npz_args("a.npz", "fixes.csv", "b.npz")
    assert cli(argv) == 0 and cli(argv + ["--overwrite"]) == 0 and export.is_export(argv[-1], dataset)
    assert not leftovers(tmp_path)


def test_signals_wait_while_the_copy_is_put_in_place(tmp_path, monkeypatch, capsys):
    """A Ctrl-C that comes during the renames waits until they are done: the export finishes and says so (before, a
    second Ctrl-C in the middle of undoing left the earlier copy in the work folder, which was then deleted)."""
    root, fixes, out = pets(tmp_path)
    assert cli(export_args(root, fixes, out)) == 0
    other = str(write_fixes(tmp_path, "1,,0,relabel,2", name="other.csv"))
    real_do = placement.Step.do

    def interrupted(step):
        os.kill(os.getpid(), signal.SIGINT)
        real_do(step)
    monkeypatch.setattr(placement.Step, "do", interrupted)
    assert cli(export_args(root, other, out, "--overwrite")) == 0
    assert "note: signal 2 came while the copy was put in place; the export finished" in capsys.readouterr().err
    assert json.loads(open(f"{out}/manifest.json").read())["label_fixes"]["sha256"] == sha(other)
    assert not leftovers(tmp_path)


def test_an_undo_that_fails_keeps_the_earlier_copy(tmp_path, monkeypatch, capsys):
    """Without the atomic exchange, an earlier folder copy is moved into the work folder before the new one goes in.
    When the new one cannot go in and the earlier one cannot be moved back, the work folder stays (it holds the
    earlier copy: before, it was deleted) and says so, and the next export to that path puts the copy back."""
    root, fixes, out = pets(tmp_path)
    assert cli(export_args(root, fixes, out)) == 0
    earlier = snapshot(out)
    monkeypatch.setattr(placement, "RENAMEAT2", None)
    fail_step(monkeypatch, lambda step: step.b == out)
    monkeypatch.setattr(placement.Step, "undo", lambda step: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    capsys.readouterr()
    assert cli(export_args(root, str(write_fixes(tmp_path, "1,,0,drop,", name="o.csv")), out, "--overwrite")) == 1
    err = capsys.readouterr().err
    assert f"cannot put the copy in place at {out} (Input/output error), nor undo what was done (I/O error)" in err
    assert not os.path.lexists(out) and len(leftovers(tmp_path)) == 1
    monkeypatch.undo()
    assert cli(export_args(root, fixes, out)) == 2  # put back first, then refused: it exists
    assert snapshot(out) == earlier and not leftovers(tmp_path)


def test_a_work_folder_is_alive_while_its_lock_is_held(tmp_path):
    """Whether the export that made a work folder still runs is read off the lock on its marker, not off a host name
    and a process id (two containers with one host name and their own process ids share a volume): a folder whose
    lock is held stays, whatever process id it names; one whose lock is free goes, even if its process id runs."""
    root, fixes, out = pets(tmp_path)
    marker = {"made_by": "export_fixed_data.py", "host": socket.gethostname(), "liveness": "flock"}
    held = tmp_path / ".pets_fixed.held.export"
    free = tmp_path / ".pets_fixed.free.export"
    for folder, pid in ((held, 999999), (free, os.getpid())):
        (folder / "copy").mkdir(parents=True)
        (folder / "made_by.json").write_text(json.dumps(dict(marker, pid=pid)))
    with open(held / "made_by.json") as f:  # another open file: flock treats it as another holder
        fcntl.flock(f, fcntl.LOCK_EX)
        assert cli(export_args(root, fixes, out)) == 0
        assert held.is_dir() and not free.exists()


# ---------------------------------------------------------------------------- failed, interrupted, repeated exports
def fail_at(n, error):
    """A link_or_copy that raises error at its n-th file, after writing the ones before."""
    calls, real = [], export.link_or_copy

    def link_or_copy(source, dest, always_copy=False):
        calls.append(source)
        if len(calls) == n:
            raise error
        return real(source, dest, always_copy)
    return link_or_copy


@pytest.mark.parametrize("earlier_export", [False, True])
def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch, capsys, earlier_export):
    root, fixes, out = pets(tmp_path)
    if earlier_export:  # and with --overwrite, the earlier copy stays as it was
        assert cli(export_args(root, fixes, out, "--copy")) == 0
    before, earlier = snapshot(root), snapshot(out) if earlier_export else None
    capsys.readouterr()
    monkeypatch.setattr(export, "link_or_copy", fail_at(5, OSError(errno.ENOSPC, "No space left on device")))
    assert cli(export_args(root, fixes, out, "--overwrite")) == 1
    err = capsys.readouterr().err
    assert err.startswith("export_fixed_data.py: error: cannot copy ") and err.endswith(
        ": No space left on device\n") and err.count("\n") == 1
    monkeypatch.setattr(export, "link_or_copy", fail_at(3, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        export.export_folder(root, fixes, out, overwrite=True)
    assert snapshot(root) == before and not leftovers(tmp_path)
    assert (snapshot(out) == earlier) if earlier_export else not os.path.lexists(out)


@pytest.fixture(params=["exchange", "no exchange"])
def renames(request, monkeypatch, tmp_path):
    """Each test twice: with the atomic exchange of Linux file systems, and without it (another system, or a file
    system without it: the earlier copy moved aside, and files moved in by a hard link and an unlink). The exchange
    is tried where the exports of the test go, its own tmp_path (so a file system that cannot exchange skips the
    test instead of passing it on the fallback, and no two workers probe in the same folder)."""
    if request.param == "no exchange":
        monkeypatch.setattr(placement, "RENAMEAT2", None)
    else:
        assert placement.exchange_works(str(tmp_path)) or pytest.skip("this file system cannot exchange two paths")
    return request.param


def fail_step(monkeypatch, fails, error=None):
    """Renames of the placement that raise where fails(step) says so (OSError EIO by default), after doing nothing."""
    real = placement.Step.do

    def do(step):
        if fails(step):
            raise error or OSError(errno.EIO, "Input/output error")
        real(step)
    monkeypatch.setattr(placement.Step, "do", do)


def test_a_failed_swap_puts_the_earlier_copy_back(tmp_path, monkeypatch, renames):
    """The .npz copy and its manifest are two renames, the manifest's first: when the copy's fails, both earlier
    files come back."""
    path, fixes, out = small_npz(tmp_path)
    assert cli(npz_args(path, fixes, out)) == 0
    earlier = (sha(out), sha(out + ".manifest.json"))
    fail_step(monkeypatch, lambda step: step.b == out and step.a.endswith("copy.npz"))
    with pytest.raises(export.RunError, match="cannot put the copy in place at .*b.npz: Input/output error"):
        export.export_npz(path, str(write_fixes(tmp_path, "0,,0,drop,", name="g.csv")), out, overwrite=True)
    assert (sha(out), sha(out + ".manifest.json")) == earlier and not leftovers(tmp_path)


def test_repeated_exports(tmp_path, capsys):
    root, fixes, out = pets(tmp_path)
    assert cli(export_args(root, fixes, out)) == 0
    first = snapshot(out)
    assert cli(export_args(root, fixes, out)) == 2  # refused, the copy as it was
    assert capsys.readouterr().err.endswith(f"error: --out {out} exists; choose another path, or pass --overwrite to "
                                            f"replace it\n") and snapshot(out) == first
    other = str(write_fixes(tmp_path, "1,,0,relabel,2", name="other.csv"))
    assert cli(export_args(root, other, out, "--overwrite")) == 0  # replaced
    m = json.loads(open(os.path.join(out, "manifest.json")).read())
    assert m["label_fixes"]["sha256"] == sha(other)
    assert os.path.isfile(os.path.join(out, "train", "frog", "1_from_cat.png"))
    assert not os.path.exists(os.path.join(out, "train", "dog", "0_from_cat.png")) and not leftovers(tmp_path)
    replaced = snapshot(out)
    assert cli(export_args(root, other, out, "--overwrite")) == 0 and snapshot(out) == replaced  # the same copy again
    capsys.readouterr()
    mine = tmp_path / "mine"  # not an export: --overwrite does not delete it
    (mine / "photos").mkdir(parents=True)
    assert cli(export_args(root, fixes, str(mine), "--overwrite")) == 2 and (mine / "photos").is_dir()
    assert f"--out {mine} exists and is not a copy exactly as export_fixed_data.py wrote it" in capsys.readouterr().err


def assert_stopped_cleanly(returncode, stdout, stderr, sig, out, root, before):
    """An export stopped by sig: 128 + sig, the one line, no copy, no work folder, the original as it was before."""
    assert returncode == 128 + sig and stdout == ""
    assert stderr == f"export_fixed_data.py: error: interrupted by signal {int(sig)}; nothing was written\n"
    assert not os.path.lexists(out) and not leftovers(os.path.dirname(out)) and snapshot(root) == before


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_export_leaves_nothing(tmp_path, sig):
    """A real process, stopped in the middle of its copy: a named pipe among the images holds it there (reading it
    waits for a writer), so the signal always comes while files are being written."""
    root, fixes, out = pets(tmp_path)
    os.mkfifo(os.path.join(root, "train", "frog", "9.png"))
    before = snapshot(root)
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "export_fixed_data.py"),
                                *export_args(root, fixes, out, "--copy")], env=script_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not any(files for work in leftovers(tmp_path) for _, _, files in os.walk(tmp_path / work / "copy")):
        assert time.time() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(sig)
    try:
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()  # a hung export must fail the test, not outlive it
    assert_stopped_cleanly(process.returncode, stdout, stderr, sig, out, root, before)


SIGNALLED_IN_TQDM = """
import os, sys, time
import tqdm.std
from export_fixed_data import cli

class SignalledWhileStarting:
    def __init__(self, *args):
        os.kill(os.getpid(), int(sys.argv[1]))  # the handler runs here, inside tqdm's `except Exception`
        time.sleep(10)
tqdm.std.TMonitor = SignalledWhileStarting
sys.exit(cli(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_no_library_can_swallow(tmp_path, sig):
    """A signal that comes while tqdm starts its monitor thread (which tqdm wraps in `except Exception` and turns into
    a warning) still stops the export: before, the export ran on, and hung on a named pipe it could not read."""
    root, fixes, out = pets(tmp_path)
    before = snapshot(root)
    process = subprocess.run([sys.executable, "-c", SIGNALLED_IN_TQDM, str(int(sig)), *export_args(root, fixes, out)],
                             cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=60)
    assert_stopped_cleanly(process.returncode, process.stdout, process.stderr, sig, out, root, before)


KILLED_AT_CALL = """
import os, signal, sys
import data.export, data.placement
from export_fixed_data import cli
if sys.argv[1] == "no exchange":
    data.placement.RENAMEAT2 = None
module = {"export": data.export, "placement": data.placement}[sys.argv[2]]
name, n = sys.argv[3], int(sys.argv[4])
real, calls = getattr(module, name), []

def killed_at_the_nth_call(*args, **kwargs):
    calls.append(args)
    if len(calls) == n:
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up runs, as with the OOM killer or a power loss
    return real(*args, **kwargs)
setattr(module, name, killed_at_the_nth_call)
sys.exit(cli(sys.argv[5:]))
"""


def killed_export(renames, function, n, argv):
    """export_fixed_data.py with argv in a real process that kills itself (SIGKILL) at the n-th call of function
    ("module name"); True when it was killed, False when it finished first."""
    process = subprocess.run([sys.executable, "-c", KILLED_AT_CALL, renames, *function.split(), str(n), *argv],
                             cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=60)
    assert process.returncode in (0, -signal.SIGKILL), process.stderr
    return process.returncode == -signal.SIGKILL


def kill_case(tmp_path, dataset, earlier):
    """For a kill test: (argv of an export, --out, what is at --out: "earlier", "new", "nothing" or "something else",
    and a function that puts the state before the export back). With `earlier`, an earlier copy (of other fixes) is
    at --out and the export replaces it. For an .npz file the copy decides: its manifest is checked on its own."""
    if dataset == "folder":
        root, fixes, out = pets(tmp_path)
        argv = export_args(root, fixes, out)
        other = export_args(root, str(write_fixes(tmp_path, "1,,0,relabel,2", name="other.csv")), out)
        content = lambda: snapshot(out)  # noqa: E731
    else:
        path, fixes, out = small_npz(tmp_path)
        argv = npz_args(path, fixes, out)
        other = npz_args(path, str(write_fixes(tmp_path, "0,,0,drop,", name="other.csv")), out)
        content = lambda: sha(out)  # noqa: E731

    def reset():
        for path in (out, out + ".manifest.json"):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
        if earlier:
            assert cli(other) == 0
        return content() if earlier else None
    assert cli(argv) == 0
    new = content()
    before = reset()

    def at_out():
        if not os.path.lexists(out):
            return "nothing"
        found = content()
        return "earlier" if earlier and found == before else "new" if found == new else "something else"
    return argv + (["--overwrite"] if earlier else []), out, at_out, reset


@pytest.mark.slow
@pytest.mark.parametrize("dataset, earlier", [("folder", False), ("folder", True), ("npz", False), ("npz", True)])
def test_a_killed_export_leaves_nothing_in_the_way(tmp_path, dataset, earlier, renames):
    """A real process killed with SIGKILL (it kills itself: no clean-up runs) while it writes the copy, and after the
    plan and after each rename of its placement, leaves at --out the earlier copy or the new one, complete, and never
    a copy without its manifest: with the atomic exchange at every moment; without it, nothing may be there between
    the two renames, until the next export puts the earlier copy back. The next export to the same path first undoes
    a placement killed half-way (after which the copy at --out, if any, is complete with its own manifest), removes
    the work folder and leaves a folder of the user's with a name alike as it is."""
    argv, out, at_out, reset = kill_case(tmp_path, dataset, earlier)
    mine = tmp_path / f".{os.path.basename(out)}.mine.export"  # not made by an export: no marker
    (mine / "photos").mkdir(parents=True)
    before = "earlier" if earlier else "nothing"
    kills = [("export link_or_copy", 2)] if dataset == "folder" else []
    kills += [("placement _fsync_folder", n) for n in range(1, 12)]
    seen = set()
    for function, n in kills:
        if not killed_export(renames, function, n, argv):  # it finished before that call: killed after every step
            assert at_out() == "new" and export.is_export(out, dataset) and leftovers(tmp_path) == [mine.name]
            break
        seen.add(at_out())
        assert at_out() in {before, "new"} | ({"nothing"} if renames == "no exchange" else set()), (function, n)
        assert os.path.lexists(out + ".manifest.json") or not os.path.lexists(out) or dataset == "folder"
        assert len(leftovers(tmp_path)) == 2  # its work folder and mine
        export.recover_killed_exports(out)  # what the next export does first
        assert at_out() in {before, "new"}, (function, n)
        assert at_out() == "nothing" or export.is_export(out, dataset)  # the copy with its own manifest
        assert leftovers(tmp_path) == [mine.name] and (mine / "photos").is_dir()
        reset()
    assert seen >= {before, "new"} and function.endswith("_fsync_folder"), seen  # before and after it went in


def test_only_the_work_folders_of_killed_exports_are_removed(tmp_path):
    """The next export to the same path removes a work folder only where its marker proves it: this command's, made
    on this host by a process that is gone."""
    root, fixes, out = pets(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    ours, host = "export_fixed_data.py", socket.gethostname()

    def folder(name, marker):
        path = tmp_path / name
        (path / "photos").mkdir(parents=True)
        if marker is not None:
            (path / "made_by.json").write_text(json.dumps(marker))
        return path
    killed = folder(".pets_fixed.killed.export", {"made_by": ours, "pid": gone.pid, "host": host})
    kept = [folder(".pets_fixed.mine.export", None),
            folder(".pets_fixed.running.export", {"made_by": ours, "pid": os.getpid(), "host": host}),
            folder(".pets_fixed.elsewhere.export", {"made_by": ours, "pid": gone.pid, "host": host + "-other"}),
            folder(".pets_fixed.not ours.export", {"made_by": "another tool", "pid": gone.pid, "host": host}),
            folder(".pets_fixed.group.export", {"made_by": ours, "pid": 0, "host": host}),
            folder(".another_copy.killed.export", {"made_by": ours, "pid": gone.pid, "host": host}),
            folder(".pets_fixed.v2.killed.export", {"made_by": ours, "pid": gone.pid, "host": host}),  # pets_fixed.v2's
            folder("target", {"made_by": ours, "pid": gone.pid, "host": host})]
    os.symlink(tmp_path / "target", tmp_path / ".pets_fixed.link.export")
    before = snapshot(tmp_path)
    assert cli(export_args(root, fixes, out)) == 0
    assert not killed.exists() and all(path.is_dir() for path in kept)
    after = snapshot(tmp_path)
    assert {k: v for k, v in before.items() if not k.startswith(b".pets_fixed.killed")} == {
        k: v for k, v in after.items() if not k.startswith(b"pets_fixed")}


def test_a_work_folder_loses_its_marker_last(tmp_path, monkeypatch):
    """An export killed while it removes its work folder must leave it marked, for the next one to remove: nothing
    removes the marker together with other things, and the marker goes when it is all that is left."""
    root, fixes, out = pets(tmp_path)
    assert cli(export_args(root, fixes, out)) == 0  # an earlier copy, which the next export moves into its work folder
    seen, real_rmtree, real_remove = [], shutil.rmtree, os.remove

    def rmtree(path, *args, **kwargs):
        seen.append(("folder", os.path.exists(os.path.join(path, "made_by.json"))))
        real_rmtree(path, *args, **kwargs)

    def remove(path, *args, **kwargs):
        if os.path.basename(path) == "made_by.json":
            seen.append(("marker", os.listdir(os.path.dirname(path))))
        real_remove(path, *args, **kwargs)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    monkeypatch.setattr(os, "remove", remove)
    assert cli(export_args(root, fixes, out, "--overwrite")) == 0 and not leftovers(tmp_path)
    assert seen == [("folder", False), ("marker", ["made_by.json"])]  # the earlier copy, without the marker; then it


@pytest.mark.parametrize("how", ["folder, links", "folder, --copy", "npz"])
def test_everything_written_is_flushed_to_disk(tmp_path, monkeypatch, how):
    """So that a power loss cannot leave a copy renamed into place but empty: every file written (a hard link adds no
    data) and every folder of the copy is flushed once before its rename, the folder it goes into after it."""
    if how == "npz":
        path, fixes, out = small_npz(tmp_path)
        argv, written = npz_args(path, fixes, out), [out, out + ".manifest.json"]
    else:
        root, fixes, out = pets(tmp_path)
        argv = export_args(root, fixes, out, *(["--copy"] if how == "folder, --copy" else []))
    flushed, real_fsync = collections.Counter(), os.fsync

    def fsync(fd):
        flushed[os.fstat(fd).st_ino] += 1
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    assert cli(argv) == 0
    if how != "npz":
        tree = [out] + [os.path.join(p, name) for p, dirs, files in os.walk(out) for name in dirs + files]
        written = [p for p in tree if how == "folder, --copy" or os.path.isdir(p) or p.endswith("manifest.json")]
    assert [flushed[os.stat(p).st_ino] for p in written] == [1] * len(written) and flushed[os.stat(tmp_path).st_ino]


# ---------------------------------------------------------------------------- bad input
def bad_input(tmp_path, problem):
    """Lay out one kind of bad input; (the arguments, what the error line must say)."""
    root, fixes, out = pets(tmp_path)
    cat0 = f"{root}/train/cat/0.png"
    if problem == "unknown class":
        return export_args(root, str(write_fixes(tmp_path, "0,,0,relabel,7")), out), \
            "line 2: new_label 7 is not a class of this data set (0..2)"
    if problem == "fixes of another data set":
        return export_args(root, str(write_fixes(tmp_path, "0,/elsewhere/train/cat/7.png,0,drop,")), out), \
            f"image 0 is {cat0} in this data set, not /elsewhere/train/cat/7.png; the fixes were made for another"
    if problem == "fixes of another label set":
        return export_args(root, str(write_fixes(tmp_path, "3,,0,relabel,2")), out), \
            "line 2: given_label 0, but image 3 is labelled 1 in this data set"
    if problem == "a file gone since the review":
        os.remove(cat0)  # every later image moves up one place
        return export_args(root, str(write_fixes(tmp_path, f"1,{root}/train/cat/1.png,0,drop,")), out), \
            f"image 1 is {root}/train/cat/2.png in this data set, not {root}/train/cat/1.png"
    if problem == "fixes file not UTF-8":  # saved by a spreadsheet in Latin-1
        (tmp_path / "latin1.csv").write_bytes(b"index,file,given_label,action,new_label\n0,caf\xe9.png,0,drop,\n")
        return export_args(root, str(tmp_path / "latin1.csv"), out), \
            f"{tmp_path}/latin1.csv is not a readable CSV file (UnicodeDecodeError"
    if problem == "a non-UTF-8 name spelled as UTF-8":  # the byte 0xe9 on disk, é (0xc3 0xa9) in the file
        os.rename(os.fsencode(cat0), os.fsencode(f"{root}/train/cat/") + b"caf\xe9.png")  # sorted after 2.png
        return export_args(root, str(write_fixes(tmp_path, f"2,{root}/train/cat/café.png,0,drop,")), out), \
            f"image 2 is {root}/train/cat/caf\\xe9.png in this data set, not {root}/train/cat/café.png"
    if problem == "a class emptied":
        return export_args(root, str(write_fixes(tmp_path, "6,,2,drop,", "7,,2,drop,", "8,,2,relabel,0")), out), \
            "after the fixes, class frog (2) has no training image left"
    if problem == "no such folder":
        return export_args(str(tmp_path / "absent"), fixes, out), f"--data_dir {tmp_path}/absent: no such folder"
    if problem == "no such fixes file":
        return export_args(root, str(tmp_path / "absent.csv"), out), \
            f"--label_fixes {tmp_path}/absent.csv: cannot read it (No such file or directory)"
    if problem == "no such npz file":
        return ["--dataset", "npz", "--data_dir", str(tmp_path / "absent.npz"), "--label_fixes", fixes, "--out", out], \
            f"--data_dir {tmp_path}/absent.npz: no such file"
    if problem == "--out is the source":
        return export_args(root, fixes, root, "--overwrite"), \
            f"--out {root} is the source {root}, inside it or around it"
    if problem == "--out inside the source":
        return export_args(root, fixes, f"{root}/fixed"), "inside it or around it"
    if problem == "--out around the source":
        return export_args(root, fixes, str(tmp_path), "--overwrite"), "inside it or around it"
    if problem == "--out in a missing folder":
        return export_args(root, fixes, f"{tmp_path}/nowhere/fixed"), f"there is no folder {tmp_path}/nowhere"
    if problem == "--out exists":
        os.mkdir(out)
        return export_args(root, fixes, out), "exists; choose another path, or pass --overwrite"
    if problem == "--copy of an npz":
        return ["--dataset", "npz", "--data_dir", f"{root}.npz", "--label_fixes", fixes, "--out", out, "--copy"], \
            "--copy is for --dataset folder"
    raise ValueError(problem)


PROBLEMS = ["unknown class", "fixes of another data set", "fixes of another label set", "a file gone since the review",
            "fixes file not UTF-8", "a non-UTF-8 name spelled as UTF-8", "a class emptied", "no such folder",
            "no such fixes file", "no such npz file", "--out is the source", "--out inside the source",
            "--out around the source", "--out in a missing folder", "--out exists", "--copy of an npz"]


@pytest.mark.parametrize("problem", PROBLEMS)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, problem, capsys):
    argv, message = bad_input(tmp_path, problem)
    before = snapshot(tmp_path)
    assert cli(argv) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.count("\n") == 1, printed.err
    assert printed.err.startswith("export_fixed_data.py: error: ") and message in printed.err, printed.err
    assert snapshot(tmp_path) == before  # nothing written, nothing removed


def test_a_file_gone_while_copying_is_one_line(tmp_path, monkeypatch, capsys):
    root, fixes, out = pets(tmp_path)
    real = export.folder_listing

    def list_then_lose_a_file(folder, *walked):
        listed = real(folder, *walked)
        os.remove(f"{root}/train/dog/2.png")
        return listed
    monkeypatch.setattr(export, "folder_listing", list_then_lose_a_file)
    assert cli(export_args(root, fixes, out)) == 2
    assert capsys.readouterr().err == (f"export_fixed_data.py: error: {root}/train/dog/2.png: gone since the folder "
                                       f"was listed (or a broken link); nothing was written: export again\n")
    assert not os.path.lexists(out) and not leftovers(tmp_path)


@pytest.mark.slow
def test_the_script_reports_bad_input_in_one_line(tmp_path):
    argv, message = bad_input(tmp_path, "unknown class")
    result = run("export_fixed_data.py", *argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.splitlines() == [f"export_fixed_data.py: error: {argv[5]}, {message}"]


# ---------------------------------------------------------------------------- the copies train
def train(*args):
    """The training script on one OpenMP thread: networks this small gain nothing from a second one, and lose much
    to spin-waiting when the cores are busy."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "blind_knowledge_dist_training.py"), *map(str, args)],
                            cwd=ROOT, env=script_env("1"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


@pytest.mark.slow
def test_copies_of_a_reviewed_run_train_with_the_labels_of_label_fixes(tmp_path):
    """A run on a folder (hostile and non-UTF-8 names among its files), fixes made from its label_issues.csv as a
    reviewer's would be (sure suggestions taken, the other flagged images dropped), exported as a folder and as an
    .npz file; both copies train, and the labels of the run on the folder copy are those of the fixes, file by file."""
    root = tmp_path / "data"
    write_noisy_folder(root, n=240, n_test=60)
    for name, new_name in (("class0", HOSTILE), ("class1", NOT_UTF8)):
        folder = root / "train" / name
        os.rename(folder / sorted(os.listdir(folder))[0], folder / new_name)
    # the reference's tipping rule splits this short run early enough (what is tested here is the export)
    schedule = ["--arch", "small_cnn", "--n_epoch", 14, "--lr", 0.1, "--lr_decay_every", 5, "--batch_size", 32,
                "--noisy_val_freq", 7, "--clean_test_freq", 7, "--print_freq", 1000, "--tipping_rule", "reference"]
    train("--dataset", "folder", "--data_dir", root, "--image_size", 16, "--results_dir", tmp_path / "results",
          *schedule)
    data = load_dataset("folder", "given", str(root), image_size=16)
    table = read_label_issues(tmp_path / "results" / "folder_given_seed_0" / "label_issues.csv", 240)
    flagged, suggested = np.flatnonzero(in_dataset_order(table, "flagged")), in_dataset_order(table, "suggested_label")
    rows = sorted([fix_row(data, i, suggested[i]) for i in flagged[::2]] + [drop_row(data, i) for i in flagged[1::2]])
    assert {"relabel", "drop"} <= {row[3] for row in rows}  # a reviewer's: half the flagged relabelled, half dropped
    write_label_fixes(tmp_path / "label_fixes.csv", rows)
    fixed = apply_label_fixes(data, str(tmp_path / "label_fixes.csv"))
    before = snapshot(root)

    result = run("export_fixed_data.py", "--dataset", "folder", "--data_dir", root, "--label_fixes",
                 tmp_path / "label_fixes.csv", "--out", tmp_path / "fixed")
    assert result.returncode == 0, result.stderr
    train("--dataset", "folder", "--data_dir", tmp_path / "fixed", "--image_size", 16, "--results_dir",
          tmp_path / "results_fixed", *schedule)
    assert snapshot(root) == before
    kept = fixed.kept
    copy = load_dataset("folder", "given", str(tmp_path / "fixed"), image_size=16)
    table = read_label_issues(tmp_path / "results_fixed" / "folder_given_seed_0" / "label_issues.csv", kept.sum())
    given = dict(zip(table["index"], table["given_label"]))  # the labels the run on the copy trained with
    assert by_content(copy.train_files, [given[i] for i in range(len(copy.train_files))]) == by_content(
        np.array(data.train_files)[kept], fixed.noisy_labels[kept])
    not_utf8 = data.train_files.index(str(root / "train" / "class1" / NOT_UTF8))
    assert any(f.endswith(os.sep + NOT_UTF8) for f in copy.train_files) == kept[not_utf8]  # its real bytes

    # The same images and fixes as an .npz file (whose rows name no file)
    np.savez(tmp_path / "data.npz", train_images=data.train_images, train_labels=data.noisy_labels,
             test_images=data.test_images, test_labels=data.test_labels)
    write_label_fixes(tmp_path / "npz_fixes.csv", [(i, "", g, a, n) for i, _, g, a, n in rows])
    result = run("export_fixed_data.py", "--dataset", "npz", "--data_dir", tmp_path / "data.npz", "--label_fixes",
                 tmp_path / "npz_fixes.csv", "--out", tmp_path / "fixed.npz")
    assert result.returncode == 0, result.stderr
    copy = load_dataset("npz", "given", str(tmp_path / "fixed.npz"))
    assert np.array_equal(copy.noisy_labels, fixed.noisy_labels[kept])
    assert np.array_equal(copy.train_images, data.train_images[kept])
    retrain = train("--dataset", "npz", "--data_dir", tmp_path / "fixed.npz", "--results_dir", tmp_path / "results_npz",
                    *schedule[:2], "--n_epoch", 2, "--batch_size", 32)
    assert f"npz given: {kept.sum() - int(kept.sum() * 0.1)} training" in retrain.stdout
