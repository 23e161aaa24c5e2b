"""Omniglot loader, cache, splits and the safe download/extract helpers."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnmeta.data import download as dl
from attnmeta.data import omniglot as om
from attnmeta.data.benchmarks import make_benchmark
from attnmeta.data.omniglot import Omniglot, maml_split, read_vinyals_split, rotation_classes, vinyals_classes


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert("1").save(buffer, format="PNG")
    return buffer.getvalue()


def _drawing(seed: int) -> np.ndarray:
    """105x105 white image (255) with a black (0) 9-pixel-high bar at a seeded row (an ink stroke)."""
    image = np.full((105, 105), 255, dtype=np.uint8)
    row = 10 + seed % 80
    image[row:row + 9, 20:85] = 0
    return image


def _fake_archive(path: Path, set_name: str = "images_background", alphabets: int = 2, characters: int = 3,
                  drawings: int = 4) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for a in range(alphabets):
            for c in range(characters):
                for d in range(drawings):
                    name = f"{set_name}/Alpha{a}/character{c + 1:02d}/{a * 100 + c:04d}_{d + 1:02d}.png"
                    zf.writestr(name, _png(_drawing(a * 31 + c * 7 + d)))
    return path


def test_reads_archive_layout_labels_and_ink_convention(tmp_path):
    _fake_archive(tmp_path / "images_background.zip")
    data = Omniglot(tmp_path, background=True, image_size=28, cache_dir=tmp_path / "cache")
    assert data.images.shape == (24, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [i // 4 for i in range(24)]
    assert data.characters == [f"Alpha{a}/character{c:02d}" for a in range(2) for c in (1, 2, 3)]
    assert data.alphabets == ["Alpha0", "Alpha1"]
    assert data.character_alphabet.tolist() == [0, 0, 0, 1, 1, 1]
    # Ink (black in the PNG) is stored as 255, background as 0; the bar covers 9/105 of the rows.
    first = data.images[0, 0].float() / 255
    row = round((10 + 0 + 4.5) * 28 / 105)
    assert first[row, 14].item() > 0.9 and first[20, 14].item() < 0.05 and first[row, 1].item() < 0.05
    assert abs(first.mean().item() - 9 * 65 / 105**2) < 0.01  # antialiased resize preserves ink mass
    raw = Omniglot(tmp_path, background=True, image_size=28, cache_dir=tmp_path / "cache", invert=False)
    assert torch.equal(raw.images, 255 - data.images)


def test_cache_is_reused_and_keyed_by_size_and_archive(tmp_path):
    archive = _fake_archive(tmp_path / "images_background.zip")
    cache = tmp_path / "cache"
    first = Omniglot(tmp_path, image_size=20, cache_dir=cache)
    assert first.cache_file.exists() and "20px" in first.cache_file.name
    stamp = first.cache_file.stat().st_mtime_ns
    start = time.perf_counter()
    again = Omniglot(tmp_path, image_size=20, cache_dir=cache)
    assert time.perf_counter() - start < 1.0
    assert again.cache_file == first.cache_file and again.cache_file.stat().st_mtime_ns == stamp
    assert torch.equal(again.images, first.images)
    assert Omniglot(tmp_path, image_size=28, cache_dir=cache).cache_file != first.cache_file
    _fake_archive(archive, characters=2)  # different archive content -> different cache entry
    changed = Omniglot(tmp_path, image_size=20, cache_dir=cache)
    assert changed.cache_file != first.cache_file and changed.num_characters == 4


def test_extracted_folder_gives_same_tensors_as_archive(tmp_path):
    (tmp_path / "zipped").mkdir()
    archive = _fake_archive(tmp_path / "zipped" / "images_background.zip")
    dl.safe_extract_zip(archive, tmp_path / "folder")
    from_zip = Omniglot(tmp_path / "zipped", cache_dir=tmp_path / "c1")
    from_folder = Omniglot(tmp_path / "folder", cache_dir=tmp_path / "c2")
    assert torch.equal(from_zip.images, from_folder.images) and from_zip.characters == from_folder.characters


def test_combined_offsets_evaluation_labels(tmp_path):
    _fake_archive(tmp_path / "images_background.zip")
    _fake_archive(tmp_path / "images_evaluation.zip", "images_evaluation", alphabets=1, characters=2)
    both = Omniglot.combined(tmp_path, cache_dir=tmp_path / "cache")
    assert len(both) == 24 + 8 and both.num_characters == 8
    assert both.labels[24:].tolist() == [6] * 4 + [7] * 4
    assert both.characters[6:] == ["Alpha0/character01", "Alpha0/character02"]


def test_missing_data_and_bad_arguments_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        Omniglot(tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        Omniglot(tmp_path, image_size=0)
    with pytest.raises(TypeError, match="combined"):
        Omniglot(tmp_path, background="all")  # type: ignore[arg-type]
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as zf:
        zf.writestr("readme.txt", "not omniglot")
    with pytest.raises(ValueError, match="no images_background"):
        Omniglot(tmp_path, cache_dir=tmp_path / "cache")


def test_download_verifies_official_checksum_and_names_the_file(tmp_path, monkeypatch):
    (tmp_path / "served").mkdir()
    served = _fake_archive(tmp_path / "served" / "images_background.zip")
    monkeypatch.setattr(om, "OMNIGLOT_URL", served.as_uri().replace("images_background", "{name}"))
    target = tmp_path / "root"
    expected = r"checksum mismatch for .*images_background\.zip.*md5.*download it again"
    with pytest.raises(ValueError, match=expected):
        Omniglot(target, download=True, cache_dir=tmp_path / "cache")
    assert not (target / "images_background.zip").exists() and not list(target.glob("*.part"))
    md5 = hashlib.md5(served.read_bytes()).hexdigest()
    monkeypatch.setitem(om.OMNIGLOT_MD5, "images_background", md5)
    sha256 = hashlib.sha256(served.read_bytes()).hexdigest()
    monkeypatch.setitem(om.OMNIGLOT_SHA256, "images_background", sha256)
    data = Omniglot(target, download=True, cache_dir=tmp_path / "cache")
    assert (target / "images_background.zip").exists() and len(data) == 24


def test_verify_checksum_accepts_right_and_rejects_wrong_digest(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"omniglot")
    dl.verify_checksum(path, md5=hashlib.md5(b"omniglot").hexdigest(),
                       sha256=hashlib.sha256(b"omniglot").hexdigest())
    with pytest.raises(ValueError, match="f.bin: sha256"):
        dl.verify_checksum(path, sha256="0" * 64)


@pytest.mark.parametrize("member", ["../escape.txt", "/abs/escape.txt", "ok/../../escape.txt"])
def test_safe_extract_refuses_members_escaping_the_target(tmp_path, member):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine/a.txt", "fine")
        zf.writestr(member, "evil")
    target = tmp_path / "a" / "b"
    with pytest.raises(ValueError, match="outside"):
        dl.safe_extract_zip(archive, target)
    assert not target.exists() and not (tmp_path / "a" / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_safe_extract_refuses_symlinks(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match="link"):
        dl.safe_extract_zip(archive, tmp_path / "out")


def test_vinyals_split_file_maps_to_augmented_ids(tmp_path):
    _fake_archive(tmp_path / "images_background.zip")
    data = Omniglot(tmp_path, cache_dir=tmp_path / "cache")
    split = tmp_path / "test.txt"
    split.write_text("Alpha1/character02/rot090\nAlpha0/character01/rot000\n\n")
    assert read_vinyals_split(split) == [("Alpha1/character02", 90), ("Alpha0/character01", 0)]
    assert vinyals_classes(data, split).tolist() == [4 * 4 + 1, 0]
    split.write_text("Alpha1/character02/rot045\n")
    with pytest.raises(ValueError, match=r"test.txt:1: rotation must be one of"):
        vinyals_classes(data, split)
    split.write_text("Nope/character01/rot000\n")
    with pytest.raises(ValueError, match="unknown Omniglot characters.*combined"):
        vinyals_classes(data, split)
    with pytest.raises(FileNotFoundError, match="prototypical-networks"):
        read_vinyals_split(tmp_path / "absent.txt")


def test_maml_split_is_seeded_partition():
    train, test = maml_split(1623, 1200, seed=3)
    assert train.numel() == 1200 and test.numel() == 423
    assert torch.equal(torch.cat([train, test]).sort().values, torch.arange(1623))
    again, _ = maml_split(1623, 1200, seed=3)
    other, _ = maml_split(1623, 1200, seed=4)
    assert torch.equal(train, again) and not torch.equal(train, other)
    assert rotation_classes(torch.tensor([2, 0])).tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    with pytest.raises(ValueError, match="train_characters"):
        maml_split(10, 10)


# Real Omniglot -----------------------------------------------------------------------------------------
def test_real_omniglot_counts_cache_speed_and_vinyals_split(shared_data):
    root = shared_data / "omniglot"
    both = Omniglot.combined(root)  # decodes once into the user cache (about 15 s), then loads from it
    start = time.perf_counter()
    background = Omniglot(root, background=True)
    evaluation = Omniglot(root, background=False)
    assert time.perf_counter() - start < 1.0
    assert (len(background), background.num_characters, len(background.alphabets)) == (19280, 964, 30)
    assert (len(evaluation), evaluation.num_characters, len(evaluation.alphabets)) == (13180, 659, 20)
    assert len(both) == 32460 and both.num_characters == 1623
    assert torch.equal(torch.bincount(both.labels), torch.full((1623,), 20))
    # Mostly background with thin strokes: mean ink between 5% and 15% of the pixels' range.
    assert 0.05 < both.images.float().mean().item() / 255 < 0.15
    splits = {name: vinyals_classes(both, root / "splits" / "vinyals" / f"{name}.txt")
              for name in ("train", "val", "test")}
    assert [splits[n].numel() // 4 for n in ("train", "val", "test")] == [1028, 172, 423]
    union = torch.cat(list(splits.values()))
    assert torch.unique(union).numel() == union.numel() == 1623 * 4


# make_benchmark ----------------------------------------------------------------------------------------
def test_regression_benchmarks_and_errors():
    bench = make_benchmark("sinusoid", ways=0, shots=10, queries=5)
    assert bench.task_type == "regression" and bench.default_backbone == {"name": "mlp",
                                                                            "options": {"hidden": [40, 40]}}
    task = bench.train.sample()
    assert task.support_x.shape == (10, 1) and task.query_y.shape == (5, 1)
    assert make_benchmark("multimodal", ways=0, shots=5, queries=5).info["family"] == "Multimodal"
    with pytest.raises(ValueError, match="unknown benchmark 'cifar'"):
        make_benchmark("cifar", ways=5, shots=1, queries=1)
    with pytest.raises(ValueError, match="needs root="):
        make_benchmark("omniglot", ways=5, shots=1, queries=1)
    with pytest.raises(ValueError, match="unknown omniglot split"):
        make_benchmark("omniglot", root="x", ways=5, shots=1, queries=1, split="random")


@pytest.fixture(scope="module")
def omniglot_sets():
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # as the shared_data fixture
    if not shared.is_dir():
        pytest.skip(f"needs the shared data folder {shared} (see ../shared/data/README.md)")
    root = shared / "omniglot"
    return root, (Omniglot(root, background=True), Omniglot(root, background=False))


def test_omniglot_benchmark_splits_on_real_data(omniglot_sets):
    root, data = omniglot_sets
    lake = make_benchmark("omniglot", data=data, ways=5, shots=1, queries=15)
    assert (lake.train.num_classes, lake.test.num_classes) == (964 * 4, 659)
    assert lake.input_shape == (1, 28, 28) and lake.default_backbone["options"] == {"hidden": 64}
    assert lake.preprocessing["invert"] is True and lake.preprocessing["image_size"] == 28
    first, again = lake.test.fixed_tasks(3, seed=5), lake.test.fixed_tasks(3, seed=5)
    assert all(torch.equal(a.query_x, b.query_x) for a, b in zip(first, again))
    assert first[0].support_x.shape == (5, 1, 28, 28) and first[0].support_x.dtype == torch.float32
    with pytest.raises(TypeError, match="unknown omniglot options"):
        make_benchmark("omniglot", data=data, ways=5, shots=1, queries=1, rotation=True)
    vinyals = make_benchmark("omniglot", root=root, data=data, ways=5, shots=1, queries=5, split="vinyals")
    assert (vinyals.info["train_classes"], vinyals.info["val_classes"], vinyals.info["test_classes"]) == (
        4112, 688, 1692)
    maml = make_benchmark("omniglot", data=data, ways=5, shots=1, queries=5, split="maml", seed=1)
    assert (maml.train.num_classes, maml.test.num_classes) == (1200 * 4, 423)
    train_chars = set((maml.train.classes // 4).tolist())
    assert not train_chars & set(maml.test.classes.tolist())
