"""review.html: one self-contained page to review the labels BKD flagged (the flagged column of label_issues.csv) and
those it is unsure of (in the lower two Otsu groups, not flagged), decide a fix for each (keep, take the suggestion,
another class, drop) and download the decisions as label_fixes.csv. The page is utils/review_template.html with the
run's data as JSON in one script element and the thumbnails as data URIs: no server, nothing fetched, it opens from
disk and can be mailed. numpy and PIL only."""
import base64
import io
import json
import os

import numpy as np
from PIL import Image

from utils import atomic_write

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "review_template.html")
PLACEHOLDER = "@@BKD_REVIEW_DATA@@"
PNG_MAX_SIDE = 32  # images up to this side (CIFAR's) are stored losslessly at their own size, shown enlarged and pixelated
JPEG_MAX_SIDE = 128  # larger images are downscaled to at most this side and stored as JPEG
JPEG_QUALITY = 90
CARD_KEYS = ("index", "file", "given", "original", "suggested", "score", "suggested_score", "group", "truth")
# Inside <script>, "</script" or "<!--" would end or confuse the element: no <, > or & reaches the page unescaped
# (they only occur inside JSON strings, where \uXXXX means the same character); U+2028/9 for old JS parsers.
_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def thumbnail(image):
    """(mime type, encoded bytes) of one uint8 (S, S, 3) RGB image: PNG at its own size for S <= 32, else JPEG
    quality 90 at most 128 px wide (a PNG of 64 x 64 already takes 9 to 16 KB, too much for a page of thousands)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    picture = Image.fromarray(image, "RGB")
    buf = io.BytesIO()
    if max(image.shape[:2]) <= PNG_MAX_SIDE:
        picture.save(buf, format="PNG", optimize=False)
        return "image/png", buf.getvalue()
    if max(picture.size) > JPEG_MAX_SIDE:
        picture.thumbnail((JPEG_MAX_SIDE, JPEG_MAX_SIDE), Image.LANCZOS)
    picture.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "image/jpeg", buf.getvalue()


def script_json(obj):
    """JSON text that is safe inside <script type="application/json">: pure ASCII, with <, >, & (and U+2028/9)
    written as \\uXXXX, so that no string in it (a file named "</script>...") can close the element."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    for char, escape in _ESCAPES.items():
        text = text.replace(char, escape)
    return text


def _card(card):
    """One card as plain JSON types (numpy integers and floats become Python ones)."""
    c = {k: card.get(k) for k in CARD_KEYS}
    missing = [k for k in CARD_KEYS if k not in card and k not in ("truth", "file", "original", "suggested_score")]
    if missing:
        raise ValueError(f"write_review_page: a card lacks {', '.join(missing)}")
    c["index"], c["given"], c["suggested"], c["group"] = (int(c[k]) for k in ("index", "given", "suggested", "group"))
    c["original"] = c["given"] if c["original"] is None else int(c["original"])
    c["file"] = "" if c["file"] is None else str(c["file"])
    c["score"] = float(c["score"])
    c["suggested_score"] = None if c["suggested_score"] is None else float(c["suggested_score"])
    c["truth"] = None if c["truth"] is None else int(c["truth"])
    return c


def _jsonable(value):
    """numpy scalars (and NaN) in the header facts as JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _base_fix(row):
    """One row of a label-fixes file: (index, file, given_label, action, new_label), cells as text but the index."""
    index, file, given_label, action, new_label = row
    text = lambda v: "" if v is None else str(v)  # noqa: E731
    return [int(index), text(file), text(given_label), text(action), text(new_label)]


def review_page(*, run, cards, images, class_names, storage_key, base_fixes=()):
    """The page as bytes (see write_review_page)."""
    images = np.asarray(images)
    cards = [_card(c) for c in cards]
    if len(images) != len(cards) or (len(cards) and (images.ndim != 4 or images.shape[3] != 3)):
        raise ValueError(f"write_review_page: {len(cards)} cards need {len(cards)} RGB images (N, S, S, 3), "
                         f"got an array of shape {images.shape}")
    mime, thumbs = "image/png", []
    for image in images:
        mime, encoded = thumbnail(image)
        thumbs.append(base64.b64encode(encoded).decode("ascii"))
    side = int(images.shape[1]) if len(cards) else 0
    data = dict(run=_jsonable(dict(run)), class_names=[str(n) for n in class_names], storage_key=str(storage_key),
                base_fixes=[_base_fix(r) for r in base_fixes], image_side=side, thumb_mime=mime,
                pixelated=side <= JPEG_MAX_SIDE, cards=cards, thumbs=thumbs)  # enlarged without blur (a JPEG's
    # artefacts then show as sharply as its pixels: the price of pages small enough to mail)
    with open(TEMPLATE, encoding="utf-8") as f:
        parts = f.read().split(PLACEHOLDER)
    if len(parts) != 2:
        raise RuntimeError(f"{TEMPLATE} must hold the placeholder {PLACEHOLDER} exactly once")
    return (parts[0] + script_json(data) + parts[1]).encode("utf-8")


def write_review_page(path, *, run, cards, images, class_names, storage_key, base_fixes=()):
    """Write the self-contained review page to `path` atomically (utils.atomic_write) and return its size in bytes.
    run: JSON-ready dict of header facts: dataset, noise_type, seed, tipping_epoch (int or None), images (N in the
         data set), flagged (int, images flagged), uncertain (int, images uncertain), shown (number of cards on the page),
         cap (the --review_max_images limit), detection (None, or dict with precision, recall, f1, auroc,
         average_precision: values may be None), label_fixes (None, or dict with path, sha256, relabelled, dropped,
         kept: the run was trained with these fixes), dropped (int: images the run's fixes dropped).
    cards: list of dicts in display order (the flagged images from the most suspicious down, then the uncertain ones;
         a card's group is 4 for a flagged image, 3 for an uncertain one):
         index (int, position in the data set), file (str, may be ''), given (int: the label the run trained on),
         original (int: the label in the data set on disk, before the run's own --label_fixes; == given without fixes),
         suggested (int: BKD's suggested label), score (float in [0,1]: agreement on the given label, low = suspicious),
         suggested_score (float), group (3 or 4), truth (int true label, or None where the ground truth is unknown).
    images: uint8 numpy array (len(cards), S, S, 3), RGB, in the order of cards.
    class_names: list of C strings (class i's name).
    storage_key: a string unique to this run and its table (decisions are kept in the browser under it).
    base_fixes: rows (index, file, given_label, action, new_label) of the label-fixes file the run was trained with
         (empty without one), carried into the downloaded file for images not decided on the page (see below)."""
    page = review_page(run=run, cards=cards, images=images, class_names=class_names, storage_key=storage_key,
                       base_fixes=base_fixes)
    atomic_write(os.fspath(path), lambda f: f.write(page))
    return len(page)
