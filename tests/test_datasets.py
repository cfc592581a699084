"""iegkit.datasets: image folders, CIFAR python pickles, the CIFAR-10 JPEG archives (all on tiny
fake data in tmp_path; one optional slow test reads ../shared/data/cifar10-jpeg when present)."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from iegkit.datasets import (  # noqa: E402
    CIFAR10_CLASSES,
    extract_cifar10_jpeg,
    load_cifar10_jpeg,
    load_cifar_pickle,
    load_image_folder,
    to_unit_range,
)

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _pixels(seed: int, h: int = 6, w: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """root/cat/{a.png, b.PNG}, root/dog/c.png, plus entries that must be ignored."""
    root = tmp_path / "images"
    arrays = {"cat/a.png": _pixels(0), "cat/b.PNG": _pixels(1), "dog/c.png": _pixels(2)}
    for name, array in arrays.items():
        _save(root / name, array)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes(b"ignored")
    (root / ".cache").mkdir()
    (root / "README").write_text("a file at the top level is not a class")
    return root, arrays


# --------------------------------------------------------------------------- image folders


def test_image_folder_reads_classes_in_sorted_order(folder):
    root, arrays = folder
    images, labels, names = load_image_folder(root)
    assert names == ["cat", "dog"]
    assert images.dtype == torch.float32 and images.shape == (3, 3, 6, 5)
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 0, 1]
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    expected = torch.from_numpy(arrays["cat/b.PNG"]).permute(2, 0, 1).float() / 255  # PNG: exact
    torch.testing.assert_close(images[1], expected)


def test_image_folder_uint8_and_explicit_class_order(folder):
    root, arrays = folder
    images, labels, names = load_image_folder(root, dtype=torch.uint8, class_names=["dog", "cat"])
    assert images.dtype == torch.uint8 and names == ["dog", "cat"]
    assert labels.tolist() == [0, 1, 1]
    assert torch.equal(images[0], torch.from_numpy(arrays["dog/c.png"]).permute(2, 0, 1))
    assert torch.equal(to_unit_range(images), images.float() / 255)


def test_image_folder_jpeg_grayscale_and_resize(tmp_path):
    root = tmp_path / "mixed"
    _save(root / "a" / "x.jpg", _pixels(3, 10, 12))
    (root / "b").mkdir()
    Image.fromarray(np.full((4, 4), 200, dtype=np.uint8)).save(root / "b" / "y.jpeg")  # mode L
    with pytest.raises(ValueError, match="image_size"):
        load_image_folder(root)  # 12x10 and 4x4 without image_size
    images, labels, names = load_image_folder(root, image_size=(8, 9))
    assert images.shape == (2, 3, 8, 9) and names == ["a", "b"]
    torch.testing.assert_close(images[1], torch.full((3, 8, 9), 200 / 255))  # L -> RGB
    assert load_image_folder(root, image_size=7)[0].shape == (2, 3, 7, 7)


def test_image_folder_errors(tmp_path, folder):
    root, _ = folder
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError):
        load_image_folder(root / "README")
    (tmp_path / "flat").mkdir()
    _save(tmp_path / "flat_img.png", _pixels(4))
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_folder(tmp_path / "flat")
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="'empty'"):
        load_image_folder(root)
    with pytest.raises(FileNotFoundError, match="bird"):
        load_image_folder(root, class_names=["cat", "bird"])
    with pytest.raises(ValueError, match="image_size"):
        load_image_folder(root, class_names=["cat"], image_size=0)
    with pytest.raises(ValueError, match="dtype"):
        load_image_folder(root, class_names=["cat"], dtype=torch.int64)


def test_image_folder_unreadable_image_names_the_file(folder):
    root, _ = folder
    broken = root / "dog" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_image_folder(root)


# --------------------------------------------------------------------------- CIFAR pickles


def _cifar10_pickles(root: Path, per_batch: int = 3, test: int = 4) -> tuple[np.ndarray, list[int]]:
    """The official layout (protocol-2 pickles with bytes keys, as the Python-2 originals)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    all_data, all_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with (root / name).open("wb") as handle:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, handle, protocol=2)
        if name != "test_batch":
            all_data.append(data)
            all_labels += labels
    with (root / "batches.meta").open("wb") as handle:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR10_CLASSES], b"num_vis": 3072},
                    handle, protocol=2)
    return np.concatenate(all_data), all_labels


def test_cifar10_pickle_layout(tmp_path):
    data, labels = _cifar10_pickles(tmp_path / "cifar-10-batches-py")
    images, y, names = load_cifar_pickle(tmp_path / "cifar-10-batches-py", "train")
    assert images.dtype == torch.uint8 and images.shape == (15, 3, 32, 32)
    assert y.dtype == torch.int64 and y.tolist() == labels
    assert names == list(CIFAR10_CLASSES)
    # channel-major rows: data[i, c * 1024 + h * 32 + w] is pixel (c, h, w)
    assert int(images[7, 2, 5, 9]) == int(data[7, 2 * 1024 + 5 * 32 + 9])
    test_images, test_labels, _ = load_cifar_pickle(tmp_path, "test")  # the parent folder works too
    assert test_images.shape == (4, 3, 32, 32) and test_labels.shape == (4,)
    as_float = load_cifar_pickle(tmp_path, "test", dtype=torch.float32)[0]
    torch.testing.assert_close(as_float, test_images.float() / 255)


def test_cifar100_pickle_layout_and_missing_meta(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    with (root / "test").open("wb") as handle:
        pickle.dump({"data": data, "fine_labels": [42, 7], "coarse_labels": [1, 2]}, handle)
    images, labels, names = load_cifar_pickle(tmp_path, "test")
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [42, 7]
    assert names == [str(c) for c in range(43)]  # no meta file: numbered names


def test_cifar_pickle_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar_pickle(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_cifar_pickle(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_cifar_pickle(tmp_path, "validation")
    _cifar10_pickles(tmp_path / "c10")
    os.remove(tmp_path / "c10" / "data_batch_4")
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        load_cifar_pickle(tmp_path / "c10", "train")
    (tmp_path / "c10" / "test_batch").write_bytes(b"garbage, not a pickle")
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar_pickle(tmp_path / "c10", "test")
    with (tmp_path / "c10" / "test_batch").open("wb") as handle:
        pickle.dump({"data": np.zeros((2, 100), dtype=np.uint8), "labels": [0, 1]}, handle)
    with pytest.raises(ValueError, match="3072"):
        load_cifar_pickle(tmp_path / "c10", "test")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_cifar_pickle_refuses_arbitrary_globals(tmp_path):
    root = tmp_path / "c10"
    root.mkdir()
    with (root / "test_batch").open("wb") as handle:
        pickle.dump({"data": _Evil(), "labels": [0]}, handle)
    with pytest.raises(ValueError, match="refusing"):
        load_cifar_pickle(root, "test")


# --------------------------------------------------------------------------- CIFAR-10 JPEG


def _fake_archive(src: Path, split: str, per_class: int = 2, classes=("airplane", "truck")) -> None:
    src.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src / f"{split}.tar.gz", "w:gz") as archive:
        for c, name in enumerate(classes):
            for i in range(per_class):
                buffer = io.BytesIO()
                Image.fromarray(_pixels(10 * c + i, 32, 32)).save(buffer, format="JPEG")
                info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                info.size = buffer.tell()
                buffer.seek(0)
                archive.addfile(info, buffer)


def test_extract_cifar10_jpeg_is_idempotent(tmp_path):
    src, cache = tmp_path / "src", tmp_path / "cache"
    _fake_archive(src, "test")
    _fake_archive(src, "train")
    assert extract_cifar10_jpeg(src, cache) == cache
    assert sorted(p.name for p in (cache / "test" / "truck").iterdir()) == ["0000.jpg", "0001.jpg"]
    assert (cache / "train" / "airplane" / "0001.jpg").is_file()
    stamp = (cache / "test" / "truck" / "0000.jpg").stat().st_mtime_ns
    os.remove(src / "test.tar.gz")  # a second call does not need the archive any more
    extract_cifar10_jpeg(src, cache)
    assert (cache / "test" / "truck" / "0000.jpg").stat().st_mtime_ns == stamp
    assert not [p for p in cache.iterdir() if p.name.startswith(".test-")]  # no temporary left


def test_cifar10_jpeg_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="test.tar.gz"):
        extract_cifar10_jpeg(tmp_path, tmp_path / "cache", splits=("test",))
    with pytest.raises(ValueError, match="splits"):
        extract_cifar10_jpeg(tmp_path, tmp_path / "cache", splits=("valid",))
    with pytest.raises(ValueError, match="split"):
        load_cifar10_jpeg(tmp_path, "valid")
    with pytest.raises(FileNotFoundError, match="neither"):
        load_cifar10_jpeg(tmp_path, "test")
    _fake_archive(tmp_path / "src", "test")  # 2 classes x 2 images, not CIFAR-10's 10 x 1000
    with pytest.raises(FileNotFoundError, match="no folder"):
        load_cifar10_jpeg(tmp_path / "src", "test", cache_dir=tmp_path / "cache")
    _fake_archive(tmp_path / "src10", "test", per_class=1, classes=CIFAR10_CLASSES)
    with pytest.raises(ValueError, match="expected 10000 images"):
        load_cifar10_jpeg(tmp_path / "src10", "test", cache_dir=tmp_path / "cache10")


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_CIFAR / "test.tar.gz").is_file(),
                    reason="../shared/data/cifar10-jpeg is not available")
def test_real_cifar10_jpeg_test_split(tmp_path):
    images, labels, names = load_cifar10_jpeg(SHARED_CIFAR, "test", cache_dir=tmp_path)
    assert images.shape == (10000, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.bincount().tolist() == [1000] * 10 and names == list(CIFAR10_CLASSES)
    assert (tmp_path / "test.pt").is_file()
    again = load_cifar10_jpeg(tmp_path, "test")  # the cache folder itself, from the decoded file
    assert torch.equal(again[0], images) and torch.equal(again[1], labels)
