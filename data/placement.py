"""Putting a finished copy in place (export_fixed_data.py): renames that never replace a path they were not told to,
written down before the first one, so that an export stopped half-way is undone as a whole: by the export itself on
an error or a signal, by the next export to the same path after a SIGKILL or a power loss.

- A new path goes in with a no-replace rename (Linux renameat2 RENAME_NOREPLACE; elsewhere a hard link and an unlink
  for a file, a check and a rename for a folder): a path that appeared in the meantime (another export, a user's
  file) makes it fail, and the export is undone.
- An earlier copy is replaced by one atomic exchange of the two (renameat2 RENAME_EXCHANGE): at every moment one of
  them, complete, is at the path. Where the file system has no exchange, the earlier copy is moved into the work
  folder first and the new one renamed in after it: a SIGKILL between the two leaves nothing at the path until the
  next export puts the earlier copy back.
- The steps (plan.json) name every path and the inode it moves, so whether a step was done is read off the disk
  (the inode at its destination), never from a record that a kill could leave behind: a step is undone only where
  it was done, and nothing else is touched. SIGINT and SIGTERM wait while the steps run or are undone.
- Liveness: a work folder belongs to a running export as long as its marker is locked (flock, held for the export's
  lifetime and released by the kernel when the process ends, however it ends). Only the work folder of an export
  that holds no lock is recovered, whatever host or process id its marker names.
Linux and other POSIX systems with flock; on network file systems (NFS, SMB) locks and renames may not be atomic.
numpy-free, standard library only."""
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import signal

PLAN = "plan.json"
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100
UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)  # by the kernel or the file system
STOPPING = (signal.SIGINT, signal.SIGTERM)


def _renameat2():
    """libc's renameat2, or None where there is none (not Linux, a libc older than glibc 2.28)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


RENAMEAT2 = _renameat2()


def renameat2(src, dst, flags):
    """rename(2) with flags: True when done, False where the system or the file system has no such rename; any
    other failure raises OSError (FileExistsError for a taken name under RENAME_NOREPLACE)."""
    if RENAMEAT2 is None:
        return False
    if RENAMEAT2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), src, None, dst)


def move_new(src, dst):
    """Rename src to dst, which must not exist (FileExistsError if it does, and nothing is moved)."""
    if renameat2(src, dst, RENAME_NOREPLACE):
        return
    if os.path.isdir(src) and not os.path.islink(src):  # a folder cannot be hard-linked: check, then rename (a
        if os.path.lexists(dst):                         # folder made in between would have to be empty, since
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)  # rename replaces only empty ones)
        os.rename(src, dst)
        return
    os.link(src, dst, follow_symlinks=False)  # fails if dst exists
    os.unlink(src)


def exchange(a, b):
    """Swap the paths a and b atomically; False (and nothing done) where the file system cannot."""
    return renameat2(a, b, RENAME_EXCHANGE)


def exchange_works(folder):
    """Whether the file system of folder can exchange two paths: tried on two empty files made there for it."""
    a, b = os.path.join(folder, "exchange_a"), os.path.join(folder, "exchange_b")
    try:
        for path in (a, b):
            open(path, "x").close()
        return exchange(a, b)
    finally:
        for path in (a, b):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _inode(path):
    """(device, inode) of path itself (a link is not followed), or None when there is nothing at path."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _fsync_folder(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(path):  # paths of any bytes in JSON
    return os.fsencode(os.path.abspath(path)).hex()


def _decode(text):
    return os.fsdecode(bytes.fromhex(text))


class Step:
    """One rename of a plan: `move` puts what is at `a` at `b` (b was free), `exchange` swaps a and b. `moved` is the
    (device, inode) that goes from a to b: it is at b exactly when the step was done."""

    def __init__(self, op, a, b, moved):
        self.op, self.a, self.b, self.moved = op, os.path.abspath(a), os.path.abspath(b), tuple(moved)

    def as_json(self):
        return {"op": self.op, "a": _encode(self.a), "b": _encode(self.b), "moved": list(self.moved)}

    @classmethod
    def from_json(cls, d):
        return cls(d["op"], _decode(d["a"]), _decode(d["b"]), d["moved"])

    def done(self):
        return _inode(self.b) == self.moved

    def do(self):
        if self.op == "exchange":
            if not exchange(self.a, self.b):
                raise OSError(errno.EOPNOTSUPP, "the file system cannot exchange two paths", self.b)
        else:
            move_new(self.a, self.b)
        for folder in {os.path.dirname(self.a), os.path.dirname(self.b)}:
            _fsync_folder(folder)  # each rename reaches the disk before the next

    def undo(self):
        if self.op == "exchange":
            self.do()  # swapping again puts both back
        elif _inode(self.a) == self.moved:  # a hard link and the unlink not yet done: one name is enough
            os.unlink(self.b)
        else:
            move_new(self.b, self.a)
            _fsync_folder(os.path.dirname(self.a))


@contextlib.contextmanager
def signals_deferred():
    """Inside, SIGINT and SIGTERM are only noted (in the list it yields), whichever thread the kernel hands them to:
    Python runs its handlers in the main thread, where this must be entered. The handlers before are back after."""
    caught = []
    before = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in STOPPING}
    try:
        yield caught
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def resend(caught):
    """Deliver the first signal noted by signals_deferred again, now that its own handler is back."""
    if caught:
        os.kill(os.getpid(), caught[0])


class Stuck(Exception):
    """Renames that failed and could not all be undone: `failure` and `undo_failure`, in words."""
    def __init__(self, failure, undo_failure):
        super().__init__(f"{failure}; undoing it: {undo_failure}")
        self.failure = getattr(failure, "strerror", None) or str(failure) or type(failure).__name__
        self.undo_failure = getattr(undo_failure, "strerror", None) or str(undo_failure)


class Placement:
    """The renames that put the new paths of an export in place, in a work folder's plan.json."""

    def __init__(self, work, steps):
        self.work, self.steps = work, steps

    @classmethod
    def plan(cls, work, pairs, aside):
        """The steps putting each (new, dest) of pairs in place, new paths all inside work. A dest in `aside` (an
        earlier copy or manifest that the export replaces) is exchanged with its new path where the file system
        can, else moved into work first; any other dest must be free. Written to work/plan.json, flushed."""
        can_exchange = any(dest in aside for _, dest in pairs) and exchange_works(work)
        # without an exchange, what is replaced goes into work first, the last pair's first (an .npz copy before its
        # manifest, so that no copy is ever without its manifest), then the new paths go in, in order
        steps = [] if can_exchange else [Step("move", dest, os.path.join(work, f"replaced_{k}"), _inode(dest))
                                         for k, (_, dest) in reversed(list(enumerate(pairs))) if dest in aside]
        steps += [Step("exchange" if can_exchange and dest in aside else "move", new, dest, _inode(new))
                  for new, dest in pairs]
        placement = cls(work, steps)
        path = os.path.join(work, PLAN)
        with open(path, "x") as f:
            json.dump([s.as_json() for s in steps], f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_folder(work)
        return placement

    @classmethod
    def read(cls, work):
        """The plan of a work folder, or None when it has none (the export never came to its renames)."""
        try:
            with open(os.path.join(work, PLAN)) as f:
                return cls(work, [Step.from_json(d) for d in json.load(f)])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):  # written in part: it was being written, no step done
            return cls(work, [])

    def run(self):
        """Do the steps in order; on any failure undo those done and raise it, or Stuck where undoing failed too."""
        try:
            for step in self.steps:
                step.do()
        except BaseException as failure:
            try:
                self.undo()
            except OSError as undo_failure:
                raise Stuck(failure, undo_failure) from failure
            raise

    def state(self):
        """'done' (every step done: the copy is in place), 'none' (no step done) or 'partial'. Steps are done in
        order and undone in reverse, so the steps done are always the first ones."""
        done = [s.done() for s in self.steps]
        return "done" if all(done) else "partial" if any(done) else "none"

    def undo(self):
        """Undo the steps that were done, the last first; an OSError stops it (what is left is then the work
        folder's to keep: see recover)."""
        for step in reversed(self.steps):
            if step.done():
                step.undo()


def lock(fd):
    """Hold an exclusive lock on the open file fd; False when another process holds one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def recover(work):
    """Finish with the work folder of an export that is gone (its marker's lock is free, and taken here): its plan
    undone where it stopped half-way, a finished one left as it is. Returns what was done ('done', 'none' or
    'undone'); raises OSError when a step cannot be undone (the work folder then stays, holding what it holds)."""
    placement = Placement.read(work)
    if placement is None:
        return "none"
    state = placement.state()
    if state == "partial":
        with signals_deferred() as caught:
            placement.undo()
        resend(caught)
        return "undone"
    return state
