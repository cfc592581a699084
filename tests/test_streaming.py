"""Images streamed from disk (issue 25, item 3): ProbeSampler over a map-style Dataset, and the
README's loop fed by a DataLoader with worker processes, nothing held in memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import iegkit
from iegkit import recipes
from iegkit.models import SmallCNN


class PngFolder(Dataset):
    """(image in [-1, 1], label, index) read from disk at every access, as a user's folder is."""

    def __init__(self, root, labels):
        self.files, self.labels = sorted(root.glob("*.png")), labels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        pixels = torch.from_numpy(np.asarray(Image.open(self.files[i]), dtype=np.float32))
        image = pixels.permute(2, 0, 1) / 127.5 - 1
        return image, int(self.labels[i]), i


class Pairs(Dataset):
    def __init__(self, folder):
        self.folder = folder

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, i):
        return self.folder[i][:2]


def write_pngs(root, n, seed):
    root.mkdir()
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=gen)
    for i in range(n):
        pixels = (torch.rand(8, 8, 3, generator=gen) * 255).to(torch.uint8)
        Image.fromarray(pixels.numpy()).save(root / f"{i:03d}.png")
    return labels


def test_probe_sampler_over_a_dataset_draws_what_the_tensors_draw(tmp_path):
    labels = write_pngs(tmp_path / "trusted", 10, seed=1)
    trusted = Pairs(PngFolder(tmp_path / "trusted", labels))
    images = torch.stack([trusted[i][0] for i in range(10)])
    from_disk = iegkit.ProbeSampler(trusted, batch_size=4, seed=3)
    in_memory = iegkit.ProbeSampler(images, labels, 4, seed=3)
    for _ in range(5):  # across two reshuffled passes
        (a, ya), (b, yb) = next(from_disk), next(in_memory)
        assert torch.equal(a, b) and torch.equal(ya, yb)
    state = from_disk.state_dict()
    expected = next(from_disk)
    from_disk.load_state_dict(state)
    assert torch.equal(next(from_disk)[0], expected[0])


def test_probe_sampler_refuses_what_it_cannot_sample_from_a_dataset(tmp_path):
    labels = write_pngs(tmp_path / "trusted", 4, seed=1)
    folder = PngFolder(tmp_path / "trusted", labels)
    with pytest.raises(TypeError, match="labels: not used with a Dataset"):
        iegkit.ProbeSampler(Pairs(folder), 4)
    with pytest.raises(ValueError, match="inputs: the trusted set is empty"):
        iegkit.ProbeSampler([], batch_size=4)
    with pytest.raises(TypeError, match="inputs: expected a tensor or a map-style Dataset"):
        iegkit.ProbeSampler(object(), batch_size=4)
    triples = iegkit.ProbeSampler(folder, batch_size=2)
    position = triples.state_dict()["position"]
    with pytest.raises(TypeError, match="items must be \\(input, label\\) pairs"):
        next(triples)
    assert triples.state_dict()["position"] == position  # a failed draw changes nothing
    floats = [(torch.zeros(2), 0.5)] * 3
    with pytest.raises(TypeError, match="labels: expected integer class indices"):
        next(iegkit.ProbeSampler(floats, batch_size=2))


def test_readme_loop_streams_from_a_dataloader_with_workers(tmp_path):
    noisy = write_pngs(tmp_path / "train", 24, seed=0)
    trusted_labels = write_pngs(tmp_path / "trusted", 6, seed=1)
    loader = DataLoader(PngFolder(tmp_path / "train", noisy), batch_size=8, shuffle=True,
                        num_workers=2, drop_last=True, generator=torch.Generator().manual_seed(0))
    probe = iegkit.ProbeSampler(Pairs(PngFolder(tmp_path / "trusted", trusted_labels)),
                                batch_size=6)
    torch.manual_seed(0)
    model = SmallCNN(in_channels=3, num_classes=3, width=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipeline = recipes.l2r(model, optimizer)
    seen = []
    for step, (images, labels, indices) in enumerate(loader):
        probe_images, probe_labels = next(probe)
        out = pipeline(images, labels, probe_images, probe_labels, step=step)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        seen += indices.tolist()
        assert torch.isfinite(out.loss) and out.weights.shape == (8,)
    assert sorted(seen) == list(range(24))


def test_image_files_index_like_a_tensor_and_name_a_bad_file(tmp_path):
    from iegkit.datasets import ImageFiles, list_image_folder, load_image_folder

    for c in range(2):
        write_pngs(_mk(tmp_path / "root", c), 3, c)
    paths, labels, names = list_image_folder(tmp_path / "root")
    loaded, loaded_labels, _ = load_image_folder(tmp_path / "root")
    files = ImageFiles(paths)
    assert files.shape == (6, 3, 8, 8) and names == ["class_0", "class_1"]
    assert torch.equal(labels, loaded_labels)
    torch.testing.assert_close(files[:], loaded * 2 - 1, rtol=0, atol=0)
    torch.testing.assert_close(files[torch.tensor([4, 1])], files[:][[4, 1]], rtol=0, atol=0)
    assert torch.equal(files[3], files[:][3]) and files[5:5].shape == (0, 3, 8, 8)
    view = files.subset([5, 0])
    assert view.shape == (2, 3, 8, 8) and torch.equal(view[0], files[5])
    Image.new("RGB", (4, 4)).save(paths[2])
    with pytest.raises(ValueError, match=f"image {paths[2]} is 4x4"):
        files[2]
    with pytest.raises(ValueError, match="paths: expected at least one image file"):
        ImageFiles([])


def _mk(root, c):
    folder = root / f"class_{c}"
    folder.parent.mkdir(exist_ok=True)
    return folder
