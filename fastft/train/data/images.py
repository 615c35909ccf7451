"""Image sources -> :class:`~fastft.train.data.sources.Raw` rows that hold image *references*.

A reference is an absolute file path (str) or the encoded bytes of an HF ``Image`` value; nothing is
decoded here except the cheap up-front check. Sources:

* an **image folder**: one sub-folder per class (the folder name is the label), images found
  recursively below each; without labels (``fastft predict``) every image below the folder;
* a **CSV/TSV/JSON/JSONL/parquet file** with an image-path column (paths relative to the file) and a
  label column; ``--image-column`` or detected from the task's ``image_columns``;
* an **HF dataset** with an ``Image`` feature (read with ``decode=False``: bytes or paths).

:func:`check_images` opens every image header and runs Pillow's ``verify()`` (no pixel decode), so a
missing, unreadable or corrupt file fails the run before anything is written, naming the row and file;
grayscale / RGBA / palette images are counted for one note (they are converted to RGB at decode).
"""

from __future__ import annotations

import os
from collections import Counter

from fastft.train.data.sources import Raw, columns_error
from fastft.train.errors import DataError, first_line

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
    """Drop rows without an image reference (empty), without a label, and repeated references (the
    same file or bytes, keeping the first); the counts go to the data report like the text cleaning's."""
    from fastft.train.data.clean import drop_rows

    refs, pairs = raw.texts, raw.pairs

    def key(i: int):
        return None if _missing(refs[i]) else (refs[i], pairs[i] if pairs is not None else None)

    return drop_rows(raw, need_labels, key)


def check_images(raw: Raw, where: str) -> Counter:
    """Every reference exists and is a readable image (header + ``verify()``, no decode); DataError
    naming the first bad row and file. Returns the count of non-RGB modes (for :func:`mode_note`)."""
    from PIL import Image, UnidentifiedImageError

    modes: Counter = Counter()
    for i, ref in enumerate(raw.texts):
        at = raw.where[i] if raw.where is not None else f"{where} row {raw.rows[i] + 1}"
        if isinstance(ref, str) and not os.path.isfile(ref):
            raise DataError(f"{at}: image file {ref} does not exist; fix the path or remove the row")
        try:
            import io

            src = io.BytesIO(ref) if isinstance(ref, (bytes, bytearray)) else ref
            with Image.open(src) as im:
                mode = im.mode
                im.verify()
        except UnidentifiedImageError:
            raise DataError(
                f"{at}: {ref_name(ref)} is not an image Pillow can read; replace or remove it"
            ) from None
        except Exception as e:  # noqa: BLE001 - truncated / corrupt data
            raise DataError(
                f"{at}: {ref_name(ref)} is corrupt ({first_line(e, 120)}); replace or remove it"
            ) from None
        if mode != "RGB":
            modes[mode] += 1
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


def table_raw(ds, path_or_name: str, where: str, task, c, need_label: bool, group: bool) -> tuple[Raw, dict]:
    """One table (a loaded file or hub split) as image rows; -> (Raw, the columns used)."""
    import datasets

    cols = list(ds.column_names)
    image = find_image_column(cols, getattr(c, "image_column", None), task.image_columns, where)
    caption = None
    if task.modality == "image_text":
        caption = _pick_column(
            "caption", "--text-column", cols, c.text_column, task.text_columns, (image,), where
        )
    label = None
    if need_label:
        exclude = (image, caption)
        label = _pick_column(
            "label", "--label-column", cols, c.label_column, task.label_columns, exclude, where
        )
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


def load_image_sources(c, task, report: dict) -> tuple[dict[str, Raw], dict]:
    """The train (+ validation/test) sources of an image task (``c``: a DataConfig) -> (raw splits,
    columns used). Image folders and tables may be mixed (e.g. a folder for train, a CSV for test)."""
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
                if task.modality == "image_text":
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
            raws[s], cols = table_raw(ds, p, f"{flag} {p}", task, c, need_label, s == "train")
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
            raws[s], cols = table_raw(ds, str(c.dataset), where, task, c, need_label, s == "train")
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
