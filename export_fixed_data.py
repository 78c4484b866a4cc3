"""Write a fixed copy of your data set: the label fixes of label_fixes.csv applied to the data on disk, for the next
tool you train with, a colleague, or the next version of the data. The original is never written to.

    python export_fixed_data.py --dataset folder --data_dir pets --label_fixes label_fixes.csv --out pets_fixed
    python export_fixed_data.py --dataset npz --data_dir pets.npz --label_fixes label_fixes.csv --out pets_fixed.npz

A folder becomes a folder in the same layout, relabelled images in their new class folders and dropped ones left out
(hard links to the originals where the file system allows, copies otherwise); an .npz file becomes an .npz file
without the dropped images and with the fixed labels. Beside the copy, a manifest traces it back: the source, the
fixes file's sha256, the counts and every image relabelled or dropped. The copy loads with --dataset folder / npz as
it is. Bad input: one line, exit code 2, nothing written; an interrupted export leaves nothing behind either, and a
killed one is undone by the next. Nothing the command did not write is ever replaced (docs/review.md says what the
export guarantees, and where it cannot)."""
import argparse
import os
import signal
import sys

from data.export import MANIFEST, export_folder, export_npz, manifest_path
from utils import InputError, RunError, printable_path


def get_parser():
    p = argparse.ArgumentParser(prog="export_fixed_data.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=("folder", "npz"),
                   help="your own data, as for the other scripts: folder (--data_dir DIR with DIR/train/<class "
                        "name>/<images>, optionally DIR/test/...) or npz (--data_dir FILE.npz)")
    p.add_argument("--data_dir", required=True, metavar="PATH",
                   help="the image folder, or the .npz file, that the fixes were made for")
    p.add_argument("--label_fixes", required=True, metavar="FILE",
                   help="the label fixes (index,file,given_label,action,new_label): label_fixes.csv saved from "
                        "review.html, checked against the data as --label_fixes is")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="the copy to write: a new folder (folder) or .npz file (npz), not inside the original; "
                        f"its manifest goes to PATH/{MANIFEST} (folder) or PATH.manifest.json (npz)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace PATH and its manifest if PATH is an earlier copy exactly as this command wrote it "
                        "(a folder holding nothing else and nothing changed; anything else is refused, naming the "
                        "first difference, and so is a manifest's path that holds a file of yours); also replaces the "
                        "manifest of an earlier .npz copy that is no longer at PATH")
    p.add_argument("--copy", action="store_true",
                   help="folder: copy every image instead of hard-linking it (a hard link is the original file under "
                        "a second name: editing its content in place edits both)")
    return p


class Interrupted(BaseException):
    """SIGINT or SIGTERM. A BaseException, as KeyboardInterrupt is, so that no `except Exception` it passes through
    (tqdm's around the start of its monitor thread, a loader's around a damaged file) swallows it and lets the
    export run on."""
    def __init__(self, signum):
        super().__init__(f"interrupted by signal {signum}; nothing was written")
        self.exit_code = 128 + signum


def stop(signum, frame):
    """SIGINT and SIGTERM end the export through its clean-up, like any error: nothing is left behind."""
    raise Interrupted(signum)


def files_line(files, refused):
    """How the images of a folder copy were written: hard links (with the one caution they need), copies (and why)."""
    parts = []
    if files["hard links"]:
        parts.append(f"{files['hard links']} hard links to the original files (no extra space: change an image by "
                     f"replacing it, never in place, or export with --copy)")
    if files["copies"]:
        parts.append(f"{files['copies']} copies"
                     + (f" (the file system refused hard links: {refused})" if refused else ""))
    return ", ".join(parts)


def main(args):
    if args.copy and args.dataset != "folder":
        raise InputError("--copy is for --dataset folder (an .npz copy is always a new file)")
    data_dir, out = os.path.expanduser(args.data_dir), os.path.expanduser(args.out)
    if args.dataset == "folder":
        record, refused = export_folder(data_dir, args.label_fixes, out, args.overwrite, args.copy)
    else:
        record, refused = export_npz(data_dir, args.label_fixes, out, args.overwrite), None

    images, fixes = record["training_images"], record["label_fixes"]
    pairs = sorted(record["relabelled_per_class_pair"], key=lambda p: -p["images"])  # the largest first
    pairs = (", ".join(f"{p['from']} -> {p['to']} {p['images']}" for p in pairs[:5])
             + (", ..." if len(pairs) > 5 else ""))
    print(f"{printable_path(data_dir)}: {images['source']} training images of {len(record['class_names'])} classes, "
          f"{record['test_images']} test images")
    print(f"label fixes {printable_path(args.label_fixes)} (sha256 {fixes['sha256'][:16]}...): "
          f"{images['relabelled']} relabelled" + (f" ({pairs})" if pairs else "") +
          f", {images['dropped']} dropped, {images['kept']} training images kept")
    if args.dataset == "folder":
        print(f"written: {printable_path(out)}: {files_line(record['files'], refused)}; the relabelled images in their "
              f"new class folders, the dropped ones left out")
    else:
        print(f"written: {printable_path(out)} (the dropped images left out, the labels after the fixes)")
    print(f"written: {printable_path(manifest_path(out, args.dataset))} (the source, the fixes, the counts, every "
          f"image relabelled or dropped)")
    print(f"train on it: python blind_knowledge_dist_training.py --dataset {args.dataset} --data_dir "
          f"{printable_path(out)}")


def cli(argv=None):
    """Parse, export, report; the exit code: 0, 2 for bad input (one line), 1 for a failed write, 128 + the signal
    number when interrupted."""
    parser = get_parser()
    args = parser.parse_args(argv)
    handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        main(args)
    except InputError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except (RunError, Interrupted) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
