"""Image sources -> :class:`~fastft.train.data.sources.Raw` rows that hold image *references*.

A reference is an absolute file path (str) or the encoded bytes of an HF ``Image`` value; nothing is
decoded here except the cheap up-front check. Sources:

* an **image folder**: one sub-folder per class (the folder name is the label), images found
  recursively below each; without labels (``fastft predict``) every image below the folder;
* a **CSV/TSV/JSON/JSONL/parquet file** with an image-path column (paths relative to the file) and a
  label column; ``--image-column`` or detected from the task's ``image_columns``;
* an **HF dataset** with an ``Image`` feature (read with ``decode=False``: bytes or paths).

:func:`check_images` opens every image, runs Pillow's ``verify()`` and decodes it in full (JPEGs at
1/8 scale, which still reads every byte), so a missing, unreadable, truncated or corrupt file fails the
run before anything is written, naming the row and file (``verify()`` alone passes a truncated JPEG
or a PNG whose damaged data has valid CRCs). Grayscale / RGBA / palette images are counted for one
note (they are converted to RGB at decode). Large images: above Pillow's ``Image.MAX_IMAGE_PIXELS``
(~89M pixels, where Pillow warns) they are counted for one note instead of a warning per decode;
above twice that (where Pillow refuses to decode, a possible decompression bomb) the run stops with a
DataError naming the file.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

from fastft.train.data.sources import Raw, columns_error
from fastft.train.errors import DataError, first_line

log = logging.getLogger("fastft")

__all__ = [
    "IMAGE_EXTENSIONS",
    "is_image_folder",
    "load_image_folder",
    "table_refs",
    "hub_refs",
    "find_image_column",
    "clean_images",
    "check_images",
    "mode_note",
    "ref_name",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _images_below(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(root, f) for f in sorted(files) if _is_image_file(f)]
    return out


def is_image_folder(path: str | None) -> bool:
    return bool(path) and os.path.isdir(path)


def load_image_folder(path: str, flag: str, need_labels: bool = True) -> Raw:
    """An image folder as rows (absolute paths, class names); sorted, so the row order is stable."""
    root = os.path.abspath(path)
    classes = sorted(
        d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )
    loose = sorted(f for f in os.listdir(root) if _is_image_file(f))
    if not need_labels:
        refs = _images_below(root)
        labels = None
    else:
        if loose or not classes:
            raise DataError(
                f"{flag} {path}: an image folder needs one sub-folder per class (e.g. {path}/cat/1.jpg); "
                + (f"found images directly in it ({loose[0]})" if loose else "found no sub-folder")
            )
        refs, labels = [], []
        for c in classes:
            files = _images_below(os.path.join(root, c))
            refs += files
            labels += [c] * len(files)
    if not refs:
        raise DataError(
            f"{flag} {path}: no image files ({', '.join(IMAGE_EXTENSIONS[:5])}, ...) found below it"
        )
    return Raw(refs, None, labels, None, list(range(len(refs))), [f"{flag} {r}" for r in refs])


def table_refs(values: list, data_file: str) -> list:
    """Image-path values of a table -> absolute paths (relative ones are relative to the file);
    HF image dicts / bytes stay as encoded bytes (or their path)."""
    base = os.path.dirname(os.path.abspath(data_file))
    out = []
    for v in values:
        if isinstance(v, dict):
            v = v.get("bytes") or v.get("path")
        if isinstance(v, str) and v.strip():
            v = os.path.expanduser(v.strip())
            v = v if os.path.isabs(v) else os.path.join(base, v)
        out.append(v)
    return out


def hub_refs(ds, col: str) -> list:
    """An HF dataset's ``Image`` column as references (encoded bytes, else the file path)."""
    import datasets

    feat = ds.features.get(col)
    if isinstance(feat, datasets.Image):
        ds = ds.cast_column(col, datasets.Image(decode=False))
    out = []
    for v in ds[col]:
        if isinstance(v, dict):
            v = v.get("bytes") or v.get("path")
        out.append(v)
    return out


def find_image_column(columns: list[str], given: str | None, candidates: tuple[str, ...], where: str) -> str:
    """``given`` (checked) or the first of ``candidates`` present; DataError lists the columns."""
    cols = list(columns)
    if given is not None:
        if given not in cols:
            raise columns_error("image", given, "--image-column", where, cols)
        return given
    found = next((c for c in candidates if c in cols), None)
    if found is None:
        raise DataError(
            f"no image column found in {where} (tried {', '.join(candidates)}); columns are: "
            f"{', '.join(map(str, cols))} (set --image-column)"
        )
    return found


def ref_name(ref) -> str:
    """How a message names an image: its path, or ``<N encoded bytes>``."""
    if isinstance(ref, (bytes, bytearray)):
        return f"<{len(ref)} encoded bytes>"
    return str(ref)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, (str, bytes)) and not v.strip())


def clean_images(raw: Raw, need_labels: bool) -> tuple[Raw, dict]:
    """Drop rows without an image reference or caption (empty), without a label, and repeated references
    (the same file or bytes, keeping the first); the counts go to the data report like the text cleaning's."""
    from fastft.train.data.clean import drop_rows

    refs, pairs = raw.texts, raw.pairs

    def key(i: int):  # an empty caption would be trained on as the text "None"
        if _missing(refs[i]) or (pairs is not None and _missing(pairs[i])):
            return None
        return refs[i], pairs[i] if pairs is not None else None

    return drop_rows(raw, need_labels, key)


def _probe(ref) -> tuple[str | None, tuple[int, int] | None, str | None, str]:
    """(mode, size, problem, detail) of one image reference; ``problem`` is None when it exists,
    passes ``verify()`` and decodes in full, else "missing" / "unreadable" / "huge" / "corrupt"."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(ref, str) and not os.path.isfile(ref):
        return None, None, "missing", ""

    def src():
        return io.BytesIO(ref) if isinstance(ref, (bytes, bytearray)) else ref

    mode = size = None
    try:
        with Image.open(src()) as im:
            mode, size = im.mode, im.size
            im.verify()  # checksums (PNG CRCs) that a decode does not look at
        with Image.open(src()) as im:  # verify() leaves the image unusable: open it again to decode
            if im.format == "JPEG":
                im.draft(im.mode, (1, 1))  # 1/8 scale: still entropy-decodes the whole file
            im.load()
    except UnidentifiedImageError:
        return mode, size, "unreadable", ""
    except Image.DecompressionBombError as e:  # raised by open(): its message has the pixel counts
        return mode, size, "huge", first_line(e, 120)
    except Exception as e:  # noqa: BLE001 - truncated / corrupt data
        return mode, size, "corrupt", first_line(e, 120)
    return mode, size, None, ""


def _subject(at: str, ref) -> str:
    """``at`` plus the image's name, unless ``at`` already names it (an image folder's rows do)."""
    name = ref_name(ref)
    return at if name in at else f"{at}: {name}"


def _problem_error(at: str, ref, problem: str, detail: str) -> DataError:
    if problem == "missing":
        return DataError(f"{at}: image file {ref} does not exist; fix the path or remove the row")
    subject = _subject(at, ref)
    if problem == "unreadable":
        return DataError(f"{subject} is not an image Pillow can read; replace or remove it")
    if problem == "huge":
        return DataError(
            f"{subject} is too large to decode safely ({detail}); downscale it or remove the row"
        )
    return DataError(f"{subject} is corrupt ({detail}); replace or remove it")


def _probe_all(refs: list, chunk: int = 256):
    """:func:`_probe` of every reference, in order, on a few threads (decoding releases the GIL);
    submitted a chunk at a time, so a million images never make a million pending futures."""
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        for start in range(0, len(refs), chunk):
            yield from pool.map(_probe, refs[start : start + chunk])


def check_images(raw: Raw, where: str) -> Counter:
    """Every reference exists and decodes (``verify()`` + a full decode, a few threads); DataError
    naming the first bad row and file. Returns the count of non-RGB modes (for :func:`mode_note`);
    images over Pillow's pixel limit get one note here (``where``: the source's name)."""
    from PIL import Image

    modes: Counter = Counter()
    large: list[tuple[int, int]] = []
    limit = Image.MAX_IMAGE_PIXELS
    # Pillow's warning per large image -> the one note below; closing() ends the threads inside it
    with warnings.catch_warnings(), closing(_probe_all(raw.texts)) as probes:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for i, (mode, size, problem, detail) in enumerate(probes):
            if problem is not None:
                at = raw.where[i] if raw.where is not None else f"{where} row {raw.rows[i] + 1}"
                raise _problem_error(at, raw.texts[i], problem, detail)
            if mode != "RGB":
                modes[mode] += 1
            if limit and size[0] * size[1] > limit:
                large.append(size)
    if large:
        w, h = max(large, key=lambda s: s[0] * s[1])
        log.warning(
            "note: %s: %d images are over Pillow's limit of %s pixels (the largest %dx%d); each is decoded "
            "in full whenever it is used, which is slow: downscale them ahead of training",
            where, len(large), f"{limit:,}", w, h,
        )  # fmt: skip
    return modes


_MODE_NAMES = {
    "L": "grayscale",
    "LA": "grayscale+alpha",
    "RGBA": "RGBA",
    "P": "palette",
    "1": "1-bit",
    "CMYK": "CMYK",
}


def mode_note(modes: Counter) -> str | None:
    """One note for the run: how many images are not RGB (they are converted at decode)."""
    if not modes:
        return None
    parts = ", ".join(f"{n} {_MODE_NAMES.get(m, m)}" for m, n in sorted(modes.items()))
    return f"{sum(modes.values())} images are not RGB ({parts}); they are converted to RGB when decoded"


# ------------------------------------------------------------------------------------------------------
# whole sources (train/validation/test) for prepare_data, and one file for eval/predict


def _pick_column(kind: str, flag: str, cols: list[str], given: str | None, known, exclude, where: str) -> str:
    """The ``kind`` column: ``given`` (``flag``) if it exists, else the first known name not in ``exclude``."""
    if given is not None:
        if given not in cols:
            raise columns_error(kind, given, flag, where, cols)
        return given
    found = next((c for c in known if c in cols and c not in exclude), None)
    if found is None:
        raise DataError(
            f"no {kind} column found in {where}; columns are: {', '.join(map(str, cols))} (set {flag})"
        )
    return found


def table_raw(
    ds, path_or_name: str, where: str, task, c, need_label: bool, group: bool, *, captions: bool
) -> tuple[Raw, dict]:
    """One table (a loaded file or hub split) as image rows (+ a caption column with ``captions``);
    -> (Raw, the columns used)."""
    import datasets

    cols = list(ds.column_names)
    image = find_image_column(cols, getattr(c, "image_column", None), task.image_columns, where)
    caption = None
    if captions:
        caption = _pick_column(
            "caption", "--text-column", cols, c.text_column, task.text_columns, (image,), where
        )
    label = None
    if need_label:
        exclude = (image, caption)
        flag, given = task.label_flag, task.class_column
        label = _pick_column("label", flag, cols, c.label_column or given, task.label_columns, exclude, where)
    group_col = c.split_group_column if group else None
    if group_col is not None and group_col not in cols:
        raise columns_error("group", group_col, "--split-group-column", where, cols)
    if isinstance(ds.features.get(image), datasets.Image) or not os.path.exists(path_or_name):
        refs = hub_refs(ds, image)
    else:
        refs = table_refs(list(ds[image]), path_or_name)
    labels = list(ds[label]) if label else None
    names = getattr(ds.features.get(label), "names", None) if label else None
    if names is not None and isinstance(ds.features.get(label), datasets.ClassLabel):
        labels = [names[int(v)] if v is not None and v >= 0 else None for v in labels]  # ids -> class names
    raw = Raw(
        refs,
        list(ds[caption]) if caption else None,
        labels,
        list(ds[group_col]) if group_col else None,
        list(range(len(refs))),
        [f"{where} row {i + 1}" for i in range(len(refs))],
    )
    return raw, {"image": image, "text": caption, "label": label, "group": group_col}


def load_image_sources(c, task, report: dict, *, captions: bool) -> tuple[dict[str, Raw], dict]:
    """The train (+ validation/test) sources of an image task (``c``: a DataConfig) -> (raw splits,
    columns used); ``captions``: rows carry a caption (tables only). Image folders and tables may be
    mixed (e.g. a folder for train, a CSV for test)."""
    from fastft.train.data.sources import load_file, load_hub

    need_label = task.needs_labels
    raws: dict[str, Raw] = {}
    used: dict = {"image": None, "text": None, "label": None, "group": c.split_group_column}
    if c.train_file:
        files = {"train": (c.train_file, "--train-file"), "validation": (c.validation_file, "--validation-file"),
                 "test": (c.test_file, "--test-file")}  # fmt: skip
        for s, (p, flag) in files.items():
            if not p:
                continue
            if is_image_folder(p):
                if captions:
                    raise DataError(
                        f"{flag} {p}: an image-text task needs a table with image and caption columns"
                    )
                if c.split_group_column:
                    raise DataError(
                        "--split-group-column needs a table (csv/jsonl) with that column, not an image folder"
                    )
                raws[s] = load_image_folder(p, flag, need_label)
                used["label"] = used["label"] or ("<sub-folder>" if need_label else None)
                continue
            ds = load_file(p, c.cache_dir, flag, task)
            raws[s], cols = table_raw(
                ds, p, f"{flag} {p}", task, c, need_label, s == "train", captions=captions
            )
            used.update({k: v for k, v in cols.items() if v})
        report["source"] = ", ".join(f"{s}={p}" for s, (p, _) in files.items() if p)
    elif c.dataset is None or str(c.dataset).lower() in ("rotten_tomatoes", "rotten-tomatoes"):
        raise DataError(
            f"--task {task.name} needs images: pass --train-file <image folder or csv/jsonl with an image "
            "column>, or --dataset <hub dataset with an Image column>"
        )
    else:
        for s, ds in load_hub(str(c.dataset), c.cache_dir).items():
            where = f"dataset {c.dataset!r} ({s})"
            raws[s], cols = table_raw(
                ds, str(c.dataset), where, task, c, need_label, s == "train", captions=captions
            )
            used.update({k: v for k, v in cols.items() if v})
        report["source"] = f"hub:{c.dataset}"
    report["columns"] = dict(used)
    return raws, used


def image_dataset(raw: Raw, with_labels: bool, extra: dict | None = None):
    """A split as a ``datasets.Dataset`` of references: ``image_ref`` (+ ``text``, ``labels``, extras)."""
    import datasets

    cols: dict = {"image_ref": list(raw.texts)}
    if raw.pairs is not None:
        cols["text"] = list(raw.pairs)
    if with_labels:
        cols["labels"] = list(raw.labels)
    cols.update(extra or {})
    return datasets.Dataset.from_dict(cols)
