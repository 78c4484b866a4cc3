"""The one way this project reads pickles: a restricted unpickler that rebuilds numpy arrays and plain
Python containers and refuses every other global, so a crafted file cannot run code."""
import io
import pickle
import zipfile

import numpy as np

_np_core = getattr(np, "_core", None) or np.core
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _np_core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _np_core.multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,  # how Python 3 pickles bytes at protocol 2
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
}


class UnsafePickle(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickle(f"refusing to load {module}.{name}: only numpy arrays are allowed") from None

    def persistent_load(self, pid):
        raise UnsafePickle("refusing a pickle with external (tensor) storage: only numpy arrays are allowed")


def loads(data):
    """Unpickle bytes of a Python 2 or 3 pickle holding numpy arrays, dicts, lists and scalars."""
    return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def load_file(path):
    """Read a plain pickle file or a torch.save zip archive (its data.pkl) through the restricted unpickler."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(names) != 1:
                raise pickle.UnpicklingError(f"{path} is a zip archive without a single data.pkl")
            return loads(archive.read(names[0]))
    with open(path, "rb") as f:
        return loads(f.read())
