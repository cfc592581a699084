"""Loaders for real image data already on disk (nothing is downloaded): image folders, the CIFAR-10
JPEG archives (``train.tar.gz``, ``test.tar.gz``), and the standard CIFAR python-pickle layout.

Every loader returns ``(images, labels, class_names)``:

* ``images``: a (N, 3, H, W) tensor, ``uint8`` (0..255) or ``float32`` in [0, 1];
* ``labels``: an int64 tensor of class indices in [0, C);
* ``class_names``: the C names, index ``c`` naming class ``c``.

Dependencies: Pillow (image decoding), numpy and torch. To feed IEG's [-1, 1] input space, use
``to_unit_range(images) * 2 - 1`` (or ``images.float() / 127.5 - 1`` for uint8).
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "CIFAR10_CLASSES",
    "IMAGE_EXTENSIONS",
    "ImageFiles",
    "extract_cifar10_jpeg",
    "list_image_folder",
    "load_cifar10_jpeg",
    "load_cifar_pickle",
    "load_image_folder",
    "to_unit_range",
]

#: File name endings read by :func:`load_image_folder` (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")

#: CIFAR-10's label order (also the alphabetical order of the class folder names).
CIFAR10_CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                    "horse", "ship", "truck")

_CIFAR10_JPEG_SPLITS = {"train": 50_000, "test": 10_000}
_DECODED_FORMAT = 1  # bump when the decoded-cache layout changes


def _pil():
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - exercised only without pillow
        raise ImportError("iegkit.datasets needs Pillow to decode images: pip install pillow") from error
    return Image


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 images to float32 in [0, 1]; float images are returned as they are."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise ValueError(f"images: expected uint8 or a floating dtype, got {images.dtype}")
    return images


# --------------------------------------------------------------------------- image folders


def _size_pair(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, bool):
        raise ValueError(f"image_size: expected None, an int or (height, width), got {image_size!r}")
    if isinstance(image_size, int):
        pair = (image_size, image_size)
    else:
        try:
            pair = tuple(int(v) for v in image_size)
        except (TypeError, ValueError):
            raise ValueError(f"image_size: expected None, an int or (height, width), "
                             f"got {image_size!r}") from None
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"image_size: expected positive (height, width), got {image_size!r}")
    return pair  # type: ignore[return-value]


def _decode(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """One image file as an (H, W, 3) uint8 array; ValueError naming the file if unreadable."""
    Image = _pil()
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image {path}: {error}") from error


def _list_classes(root: Path, class_names: Sequence[str] | None) -> list[str]:
    if not root.exists():
        raise FileNotFoundError(f"root: image folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"root: {root} is not a directory")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_names is None:
        if not found:
            raise ValueError(f"root: {root} has no class sub-folders (expected root/<class>/*.png|jpg)")
        return found
    names = list(class_names)
    if len(set(names)) != len(names):
        raise ValueError(f"class_names: duplicate names in {names}")
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        raise FileNotFoundError(f"class_names: no folder for {missing} under {root}")
    return names


def _class_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: p.name)


def list_image_folder(root: str | os.PathLike, *, class_names: Sequence[str] | None = None
                      ) -> tuple[list[Path], Tensor, list[str]]:
    """The files of a ``root/<class_name>/*`` tree in ``load_image_folder``'s order, not decoded:
    ``(paths, labels int64 (N,), class_names)``; for ``ImageFiles`` (folders larger than memory)."""
    root = Path(root)
    names = _list_classes(root, class_names)
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(names):
        files = _class_files(root / name)
        if not files:
            raise ValueError(f"class {name!r}: folder {root / name} holds no "
                             f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images")
        paths += files
        labels += [index] * len(files)
    return paths, torch.tensor(labels, dtype=torch.int64), names


class ImageFiles(Dataset):
    """Images decoded from disk at each access, as floats in [-1, 1]: a map-style Dataset (an
    int gives one (3, H, W) image, for DataLoader workers) that also indexes like a tensor (a
    slice, a list or an index tensor gives the stacked batch), so ``training.fit`` and
    ``training.accuracy`` read it where they read an image tensor. ``shape`` is (N, 3, H, W),
    from the first image (or ``image_size``); an image of another size is an error naming it."""

    def __init__(self, paths: Sequence[str | os.PathLike], *,
                 image_size: int | Sequence[int] | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("paths: expected at least one image file")
        self.size = _size_pair(image_size)
        height, width = _decode(self.paths[0], self.size).shape[:2]
        self.shape = torch.Size((len(self.paths), 3, height, width))

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, i: int) -> Tensor:
        array = _decode(self.paths[i], self.size)
        if array.shape[:2] != tuple(self.shape[2:]):
            raise ValueError(f"image {self.paths[i]} is {array.shape[1]}x{array.shape[0]} (WxH), "
                             f"not {self.shape[3]}x{self.shape[2]}; pass image_size= to resize")
        # as the CLI scales a loaded folder (x / 255 * 2 - 1), so both give the same floats
        return torch.tensor(array).permute(2, 0, 1).float().div_(255.0) * 2.0 - 1.0

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> Tensor:
        if isinstance(index, int) or (isinstance(index, Tensor) and index.dim() == 0):
            return self._image(int(index))
        rows = range(len(self))[index] if isinstance(index, slice) else [int(i) for i in index]
        if not len(rows):
            return torch.empty((0, *self.shape[1:]))
        return torch.stack([self._image(i) for i in rows])

    def subset(self, indices: Sequence[int] | Tensor) -> ImageFiles:
        """The files at ``indices``, in that order (no decoding beyond the first image)."""
        view = ImageFiles.__new__(ImageFiles)
        view.paths = [self.paths[int(i)] for i in indices]
        view.size = self.size
        view.shape = torch.Size((len(view.paths), *self.shape[1:]))
        return view


def load_image_folder(root: str | os.PathLike, *, image_size: int | Sequence[int] | None = None,
                      dtype: torch.dtype = torch.float32,
                      class_names: Sequence[str] | None = None) -> tuple[Tensor, Tensor, list[str]]:
    """Read a ``root/<class_name>/*.{png,jpg,jpeg}`` tree with Pillow.

    Classes are the sub-folders in sorted order (or ``class_names``, in that order); inside a class
    the files are read in sorted file-name order. Other files and hidden entries are ignored. Every
    image is converted to RGB.

    Args:
      root: the folder holding one sub-folder per class.
      image_size: None (every image must already have the same size) or an int / (height, width)
        to which each image is resized (bilinear).
      dtype: ``torch.uint8`` (0..255) or a floating dtype (values in [0, 1]).
      class_names: the classes to read and their order; default: all sub-folders, sorted.

    Returns:
      ``(images (N, 3, H, W), labels int64 (N,), class_names)``.

    Raises:
      FileNotFoundError / NotADirectoryError: ``root`` (or a named class folder) is missing.
      ValueError: no class folders, a class folder without images, an unreadable image (the
        message names the file), or images of different sizes without ``image_size``.
    """
    if dtype != torch.uint8 and not dtype.is_floating_point:
        raise ValueError(f"dtype: expected torch.uint8 or a floating dtype, got {dtype}")
    size = _size_pair(image_size)
    root = Path(root)
    names = _list_classes(root, class_names)
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    first: tuple[Path, tuple[int, ...]] | None = None
    for index, name in enumerate(names):
        files = _class_files(root / name)
        if not files:
            raise ValueError(f"class {name!r}: folder {root / name} holds no "
                             f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images")
        for path in files:
            array = _decode(path, size)
            if first is None:
                first = (path, array.shape)
            elif array.shape != first[1]:
                raise ValueError(
                    f"image {path} is {array.shape[1]}x{array.shape[0]} (WxH) but {first[0]} is "
                    f"{first[1][1]}x{first[1][0]}; pass image_size= to resize them to one size")
            arrays.append(array)
            labels.append(index)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if dtype != torch.uint8:
        images = images.to(dtype).div_(255.0)
    return images, torch.tensor(labels, dtype=torch.int64), names


# --------------------------------------------------------------------------- CIFAR-10 JPEG


def _safe_extract(archive: tarfile.TarFile, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: refuses links, absolute paths...
        archive.extractall(dest, filter="data")
        return
    base = dest.resolve()  # pragma: no cover - older Pythons
    for member in archive.getmembers():  # pragma: no cover
        target = (dest / member.name).resolve()
        if not (member.isfile() or member.isdir()) or base not in (target, *target.parents):
            raise ValueError(f"refusing to extract {member.name!r} from the archive")
    archive.extractall(dest)  # pragma: no cover


def _marker(cache_dir: Path, split: str) -> Path:
    return cache_dir / f".{split}.extracted"


def extract_cifar10_jpeg(src_dir: str | os.PathLike, cache_dir: str | os.PathLike, *,
                         splits: Sequence[str] = ("train", "test")) -> Path:
    """Extract ``src_dir/{train,test}.tar.gz`` (the CIFAR-10 JPEG archives) into ``cache_dir``.

    The archives hold ``<split>/<class>/NNNN.jpg``; they end up as ``cache_dir/<split>/<class>/``.
    Idempotent: a split is extracted once (into a temporary folder, then renamed, so an interrupted
    run leaves nothing half-done) and a marker file records it; later calls return at once.

    Returns ``cache_dir`` as a Path.
    """
    src, cache = Path(src_dir), Path(cache_dir)
    for split in splits:
        if split not in _CIFAR10_JPEG_SPLITS:
            raise ValueError(f"splits: expected 'train' and/or 'test', got {split!r}")
        if _marker(cache, split).exists() and (cache / split).is_dir():
            continue
        archive_path = src / f"{split}.tar.gz"
        if not archive_path.is_file():
            raise FileNotFoundError(f"src_dir: {archive_path} not found (expected the CIFAR-10 JPEG "
                                    f"archives train.tar.gz and test.tar.gz)")
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=f".{split}-") as tmp:
            with tarfile.open(archive_path, "r:gz") as archive:
                _safe_extract(archive, Path(tmp))
            extracted = Path(tmp) / split
            if not extracted.is_dir():
                raise ValueError(f"{archive_path}: expected a top-level folder {split!r} in the archive")
            if (cache / split).exists():
                shutil.rmtree(cache / split)
            extracted.rename(cache / split)
        _marker(cache, split).write_text(f"extracted from {archive_path}\n")
    return cache


def _default_cache_dir() -> Path:
    base = os.environ.get("IEGKIT_CACHE") or os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    return (root if os.environ.get("IEGKIT_CACHE") else root / "iegkit") / "cifar10-jpeg"


def load_cifar10_jpeg(path: str | os.PathLike, split: str, *, cache_dir: str | os.PathLike | None = None,
                      verbose: bool = False) -> tuple[Tensor, Tensor, list[str]]:
    """CIFAR-10 from the JPEG archives as uint8 (N, 3, 32, 32) images, int64 labels, class names.

    ``path`` is either the source folder with ``train.tar.gz``/``test.tar.gz`` (the split is then
    extracted into ``cache_dir``; default ``$IEGKIT_CACHE/cifar10-jpeg``, else
    ``$XDG_CACHE_HOME/iegkit/cifar10-jpeg``, else ``~/.cache/iegkit/cifar10-jpeg``) or a cache
    folder made by :func:`extract_cifar10_jpeg` (``cache_dir`` is then ignored). The decoded file
    is about 150 MB for the training split.

    The first call extracts and decodes the split (about 5 s per 10,000 images) and saves
    ``<cache>/<split>.pt``; later calls load that file (well under a second). Images are ordered by
    class (CIFAR-10's label order), then by file number, which is the image's rank within its class
    in the original CIFAR-10 order.
    """
    if split not in _CIFAR10_JPEG_SPLITS:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: {path} does not exist")
    if (path / f"{split}.tar.gz").is_file():
        cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    else:
        cache = path
    decoded = cache / f"{split}.pt"
    if decoded.is_file():
        blob = torch.load(decoded, weights_only=True)
        if blob.get("format") == _DECODED_FORMAT:
            return blob["images"], blob["labels"], list(blob["class_names"])
    if not (cache / split).is_dir():
        if not (path / f"{split}.tar.gz").is_file():
            raise FileNotFoundError(f"path: {path} holds neither {split}.tar.gz nor an extracted "
                                    f"{split}/ folder")
        if verbose:
            print(f"extracting {path / f'{split}.tar.gz'} into {cache} ...", flush=True)
        extract_cifar10_jpeg(path, cache, splits=(split,))
    if verbose:
        print(f"decoding {cache / split} (once; cached as {decoded}) ...", flush=True)
    images, labels, names = load_image_folder(cache / split, dtype=torch.uint8,
                                              class_names=CIFAR10_CLASSES)
    expected = _CIFAR10_JPEG_SPLITS[split]
    if images.shape[0] != expected or tuple(images.shape[1:]) != (3, 32, 32):
        raise ValueError(f"{cache / split}: expected {expected} images of 3x32x32, got "
                         f"{tuple(images.shape)}")
    tmp = decoded.with_suffix(".pt.tmp")
    torch.save({"format": _DECODED_FORMAT, "images": images, "labels": labels,
                "class_names": list(names)}, tmp)
    tmp.replace(decoded)
    return images, labels, names


# --------------------------------------------------------------------------- CIFAR pickles


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of numpy arrays, lists, bytes) and nothing else: a CIFAR
    file cannot run arbitrary code through ``find_class``."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"), ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
        ("__builtin__", "object"), ("builtins", "object"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR pickle")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"root: {path} not found")
    try:
        with path.open("rb") as handle:
            blob = _NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"cannot read CIFAR pickle {path}: {error}") from error
    if not isinstance(blob, dict):
        raise ValueError(f"cannot read CIFAR pickle {path}: expected a dict, got {type(blob).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in blob.items()}


def _names(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def load_cifar_pickle(root: str | os.PathLike, split: str, *,
                      dtype: torch.dtype = torch.uint8) -> tuple[Tensor, Tensor, list[str]]:
    """CIFAR-10 or CIFAR-100 in the python-pickle layout of the official tarballs.

    CIFAR-10: ``root/data_batch_1`` .. ``data_batch_5`` (train), ``root/test_batch`` (test) and
    ``root/batches.meta`` (class names). CIFAR-100: ``root/train``, ``root/test`` and ``root/meta``
    (the 100 fine labels). ``root`` may also be the folder that holds ``cifar-10-batches-py`` or
    ``cifar-100-python``. Each batch holds ``data`` (N x 3072 uint8, channel-major) and ``labels``
    (``fine_labels`` for CIFAR-100). Without a meta file the class names are "0", "1", ...

    Only numpy arrays and plain containers are unpickled; any other global in the file is refused.

    Returns ``(images (N, 3, 32, 32), labels int64, class_names)``; ``dtype`` as in
    :func:`load_image_folder`.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if dtype != torch.uint8 and not dtype.is_floating_point:
        raise ValueError(f"dtype: expected torch.uint8 or a floating dtype, got {dtype}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: CIFAR folder {root} does not exist")
    for sub in ("cifar-10-batches-py", "cifar-100-python"):
        if (root / sub).is_dir() and not (root / "test_batch").exists() and not (root / "test").exists():
            root = root / sub
            break
    if (root / "test_batch").is_file() or (root / "data_batch_1").is_file():
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta_file, meta_key = "labels", "batches.meta", "label_names"
    elif (root / "test").is_file() or (root / "train").is_file():
        files = [split]
        label_key, meta_file, meta_key = "fine_labels", "meta", "fine_label_names"
    else:
        raise FileNotFoundError(f"root: {root} holds neither CIFAR-10 batches (data_batch_1..5, "
                                f"test_batch) nor CIFAR-100 files (train, test)")
    data, labels = [], []
    for name in files:
        blob = _read_pickle(root / name)
        if "data" not in blob or label_key not in blob:
            raise ValueError(f"CIFAR pickle {root / name}: expected keys 'data' and {label_key!r}, "
                             f"got {sorted(blob)}")
        array = np.asarray(blob["data"], dtype=np.uint8)
        if array.ndim != 2 or array.shape[1] != 3 * 32 * 32 or array.shape[0] != len(blob[label_key]):
            raise ValueError(f"CIFAR pickle {root / name}: expected data of shape (N, 3072) and N "
                             f"labels, got {array.shape} and {len(blob[label_key])} labels")
        data.append(array)
        labels.extend(int(v) for v in blob[label_key])
    images = torch.from_numpy(np.concatenate(data).reshape(-1, 3, 32, 32).copy())
    labels_t = torch.tensor(labels, dtype=torch.int64)
    if (root / meta_file).is_file():
        names = _names(_read_pickle(root / meta_file).get(meta_key, []))
    else:
        names = []
    num_classes = int(labels_t.max()) + 1 if labels_t.numel() else 0
    if len(names) < num_classes:
        names = [str(c) for c in range(num_classes)]
    if dtype != torch.uint8:
        images = images.to(dtype).div_(255.0)
    return images, labels_t, names
