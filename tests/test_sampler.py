"""EpisodeSampler: invariants (hypothesis), uniformity, rotation classes, Dataset path, resume, bad input."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnmeta.tasks import (
    EpisodeSampler,
    Rotations,
    TaskBatch,
    check_disjoint_splits,
    fixed_episodes,
)

PROPERTY = settings(derandomize=True, max_examples=60, deadline=None)


def indexed_data(n: int, side: int = 0) -> torch.Tensor:
    """Example ``i`` holds ``i`` (``[n, 1]``), or ``i * side**2 + pixel`` (``[n, 1, side, side]``)."""
    if side == 0:
        return torch.arange(n, dtype=torch.float64)[:, None]
    pixels = side * side
    return (torch.arange(n)[:, None] * pixels + torch.arange(pixels)).reshape(n, 1, side, side).double()


def example_index(x: torch.Tensor, side: int = 0) -> torch.Tensor:
    """Invert ``indexed_data`` (rotation-invariant): ``[..., *example_shape]`` -> ``[...]`` int64."""
    if side == 0:
        return x[..., 0].long()
    return torch.div(x.flatten(-3).min(-1).values, side * side, rounding_mode="floor").long()


@st.composite
def sampler_setups(draw):
    """Random labelled data (sparse, shuffled class ids, unequal class sizes), split and N/K/Q."""
    num_classes = draw(st.integers(1, 9))
    ids = draw(st.lists(st.integers(0, 50), min_size=num_classes, max_size=num_classes, unique=True))
    counts = draw(st.lists(st.integers(2, 9), min_size=num_classes, max_size=num_classes))
    labels = torch.tensor([c for c, n in zip(ids, counts) for _ in range(n)])
    labels = labels[
        torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    ]
    need = draw(st.integers(2, min(counts)))
    shots = draw(st.integers(1, need - 1))
    split = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=num_classes, unique=True))
    ways = draw(st.integers(1, len(split)))
    return {
        "labels": labels,
        "classes": split,
        "ways": ways,
        "shots": shots,
        "queries": need - shots,
        "shuffle_examples": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31)),
    }


def check_invariants(
    batch: TaskBatch,
    labels: torch.Tensor,
    split: list[int],
    ways: int,
    shots: int,
    queries: int,
    variants: int = 1,
    side: int = 0,
) -> None:
    tasks = len(batch)
    assert batch.support_x.shape[:2] == (tasks, ways * shots)
    assert batch.query_x.shape[:2] == (tasks, ways * queries)
    assert batch.support_y.dtype == batch.query_y.dtype == torch.long
    assert batch.classes.shape == (tasks, ways)
    for task in batch:
        # exact counts, labels 0..N-1
        assert torch.equal(torch.bincount(task.support_y, minlength=ways), torch.full((ways,), shots))
        assert torch.equal(torch.bincount(task.query_y, minlength=ways), torch.full((ways,), queries))
        # distinct classes inside the split
        assert len(set(task.classes.tolist())) == ways
        assert set(task.classes.tolist()) <= set(split)
        # support and query disjoint, no example twice (rotation classes of one base class share its examples,
        # each rotated differently, so with rotations this holds per class)
        support, query = example_index(task.support_x, side), example_index(task.query_x, side)
        for label in range(ways):
            chosen = support[task.support_y == label].tolist() + query[task.query_y == label].tolist()
            assert len(set(chosen)) == shots + queries
        if variants == 1:
            assert len(set(support.tolist()) | set(query.tolist())) == ways * (shots + queries)
        # same label <-> same original class: each example's true class is classes[label]
        for index, y in [(support, task.support_y), (query, task.query_y)]:
            assert torch.equal(labels[index], torch.div(task.classes[y], variants, rounding_mode="floor"))


@PROPERTY
@given(sampler_setups())
def test_sampler_invariants_tensor_path(setup):
    labels = setup.pop("labels")
    sampler = EpisodeSampler(indexed_data(labels.numel()), labels, **setup)
    batch = sampler.sample_batch(7)
    check_invariants(batch, labels, setup["classes"], setup["ways"], setup["shots"], setup["queries"])


@PROPERTY
@given(sampler_setups())
def test_same_seed_same_tasks_different_seed_different_tasks(setup):
    labels = setup.pop("labels")
    data = indexed_data(labels.numel())
    first = EpisodeSampler(data, labels, **setup).sample_batch(20)
    again = EpisodeSampler(data, labels, **setup).sample_batch(20)
    assert torch.equal(first.support_x, again.support_x) and torch.equal(first.query_x, again.query_x)
    assert torch.equal(first.classes, again.classes)
    setup["seed"] += 1
    other = EpisodeSampler(data, labels, **setup).sample_batch(20)
    # every task has >= 2 equally likely outcomes (at least the order of its K+Q examples), so 20 equal
    # tasks in a row would have probability <= 2**-20
    assert not (torch.equal(first.support_x, other.support_x) and torch.equal(first.query_x, other.query_x))


@PROPERTY
@given(sampler_setups(), st.sampled_from([(0, 90, 180, 270), (0, 180), (270, 90)]))
def test_sampler_invariants_with_rotation_classes(setup, degrees):
    labels = setup.pop("labels")
    variants = len(degrees)
    base_split = setup.pop("classes")
    split = [c * variants + v for c in base_split for v in range(variants)]
    setup["ways"] = min(setup["ways"] * 2, len(split))
    sampler = EpisodeSampler(
        indexed_data(labels.numel(), side=3), labels, classes=split, rotations=degrees, **setup
    )
    batch = sampler.sample_batch(5)
    check_invariants(batch, labels, split, setup["ways"], setup["shots"], setup["queries"], variants, side=3)


def test_rotation_classes_are_rot90_of_base_images():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(60, 1, 5, 5, generator=generator)
    labels = torch.arange(6).repeat_interleave(10)
    degrees = (0, 90, 180, 270)
    sampler = EpisodeSampler(images, labels, 5, 2, 3, rotations=degrees, seed=3)
    seen_variants = set()
    for task in sampler.fixed_tasks(40):
        for x, y in [(task.support_x, task.support_y), (task.query_x, task.query_y)]:
            for example, label in zip(x, y):
                augmented = int(task.classes[label])
                base, variant = divmod(augmented, len(degrees))
                seen_variants.add(variant)
                original = torch.rot90(example, -degrees[variant] // 90, dims=(-2, -1))
                match = torch.nonzero((images == original).flatten(1).all(1)).flatten()
                assert match.numel() == 1 and int(labels[match]) == base
                # the stated direction: counter-clockwise, as torch.rot90 / numpy.rot90
                assert torch.equal(
                    example, torch.rot90(images[match[0]], degrees[variant] // 90, dims=(-2, -1))
                )
    assert seen_variants == {0, 1, 2, 3}


def test_rotation_of_uint8_images_and_custom_augmentation():
    images = torch.randint(
        0, 256, (40, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    labels = torch.arange(4).repeat_interleave(10)

    class Negate:
        """Two classes per base class: the image and its negative (a non-rotation ClassAugmentation)."""

        def __len__(self) -> int:
            return 2

        def __call__(self, x, variant):
            return torch.where(variant.view(-1, *[1] * (x.dim() - 1)) == 1, 255 - x, x)

    sampler = EpisodeSampler(images, labels, 3, 1, 1, augmentation=Negate(), seed=2)
    task = sampler.sample()
    for example, label in zip(task.support_x, task.support_y):
        base, variant = divmod(int(task.classes[label]), 2)
        original = 255 - example if variant else example
        match = torch.nonzero((images == original).flatten(1).all(1)).flatten()
        assert int(labels[match[0]]) == base
    rotated = EpisodeSampler(images, labels, 3, 1, 1, rotations=(90,)).sample()
    assert rotated.support_x.dtype == torch.uint8


def test_class_and_example_choice_are_uniform():
    """Chi-square tests (fixed seed) of class-by-label-position and example frequencies."""
    labels = torch.arange(10).repeat_interleave(6)
    sampler = EpisodeSampler(indexed_data(60), labels, 3, 1, 1, seed=5)
    batch = sampler.sample_batch(3000)
    table = torch.zeros(10, 3)
    for position in range(3):
        table[:, position] = torch.bincount(batch.classes[:, position], minlength=10).float()
    chi2 = ((table - 300.0) ** 2 / 300.0).sum()
    assert chi2 < 58.3  # chi-square, 29 degrees of freedom, p = 0.001
    chosen = torch.cat([batch.support_x[..., 0], batch.query_x[..., 0]], 1).long().flatten()
    counts = torch.bincount(chosen, minlength=60).float()
    expected = 3000 * 3 * 2 / 60  # each task: 3 classes x 2 of its 6 examples
    assert ((counts - expected) ** 2 / expected).sum() < 99.6  # 59 degrees of freedom, p = 0.001
    # many ways (> 16) take the other class-choice method; it must be uniform too
    many = EpisodeSampler(indexed_data(60), torch.arange(20).repeat_interleave(3), 17, 1, 1, seed=6)
    frequency = torch.bincount(many.sample_batch(400).classes.flatten(), minlength=20).float()
    expected = 400 * 17 / 20
    assert ((frequency - expected) ** 2 / expected).sum() < 43.8  # 19 degrees of freedom, p = 0.001


def test_invariants_with_many_ways_and_unequal_classes():
    """More than 16 ways take the other class-choice method; the invariants hold there too."""
    counts = [3 + i % 5 for i in range(30)]
    labels = torch.tensor([100 + 7 * c for c, n in enumerate(counts) for _ in range(n)])
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(1))]
    split = [100 + 7 * c for c in range(0, 30, 1) if c != 4]
    sampler = EpisodeSampler(
        indexed_data(labels.numel()), labels, 20, 2, 1, classes=split, shuffle_examples=True
    )
    check_invariants(sampler.sample_batch(10), labels, split, 20, 2, 1)


def test_label_order_is_random_per_task():
    labels = torch.arange(5).repeat_interleave(4)
    batch = EpisodeSampler(indexed_data(20), labels, 5, 1, 1, classes=[0, 1, 2, 3, 4]).sample_batch(50)
    assert len({tuple(c) for c in batch.classes.tolist()}) > 30


def test_layout_and_shuffle_examples():
    labels = torch.arange(6).repeat_interleave(5)
    plain = EpisodeSampler(indexed_data(30), labels, 3, 2, 3).sample()
    assert plain.support_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert plain.query_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    shuffled = EpisodeSampler(indexed_data(30), labels, 3, 2, 3, shuffle_examples=True).sample_batch(20)
    assert any(y.tolist() != [0, 0, 0, 1, 1, 1, 2, 2, 2] for y in shuffled.query_y)


def test_batch_equals_successive_samples_and_fixed_tasks_depend_on_seed_only():
    labels = torch.arange(12).repeat_interleave(5)
    sampler = EpisodeSampler(indexed_data(60), labels, 4, 1, 2, shuffle_examples=True, seed=1)
    generator = torch.Generator().manual_seed(9)
    batch = sampler.sample_batch(6, generator)
    generator.manual_seed(9)
    singles = TaskBatch.stack([sampler.sample(generator) for _ in range(6)])
    assert torch.equal(batch.support_x, singles.support_x) and torch.equal(batch.query_y, singles.query_y)

    fixed = sampler.fixed_tasks(30, seed=4)
    sampler.sample_batch(3)  # advancing the sampler's own stream does not change fixed episodes
    other_sampler = EpisodeSampler(indexed_data(60), labels, 4, 1, 2, shuffle_examples=True, seed=77)
    for a, b, c in zip(fixed, other_sampler.fixed_tasks(30, seed=4), fixed_episodes(sampler, 30, seed=4)):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, c.query_x)
    assert torch.equal(sampler.fixed_tasks(10, seed=4)[9].query_x, fixed[9].query_x)  # prefix-stable
    assert not torch.equal(sampler.fixed_tasks(1, seed=5)[0].query_x, fixed[0].query_x)


def test_fixed_episodes_of_a_source_with_only_sample():
    class Source:
        def sample(self, generator):
            return torch.rand(3, generator=generator)

    a, b = fixed_episodes(Source(), 4, seed=2), fixed_episodes(Source(), 4, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(TypeError, match="task source with sample"):
        fixed_episodes(object(), 3)


def test_state_dict_resumes_exactly():
    labels = torch.arange(8).repeat_interleave(4)
    sampler = EpisodeSampler(indexed_data(32), labels, 3, 1, 2, seed=0)
    sampler.sample_batch(4)
    state = sampler.state_dict()
    expected = sampler.sample_batch(4)
    resumed = EpisodeSampler(indexed_data(32), labels, 3, 1, 2, seed=123)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.sample_batch(4).query_x, expected.query_x)
    wrong = EpisodeSampler(indexed_data(32), labels, 2, 1, 2)
    with pytest.raises(ValueError, match="ways=3, this one has ways=2"):
        wrong.load_state_dict(state)


class PairDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``(x, y)`` items over tensors (counts its reads)."""

    def __init__(self, data, labels):
        self.data, self.labels, self.reads = data, labels, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        self.reads += 1
        return self.data[index], int(self.labels[index])


def test_dataset_path_equals_tensor_path():
    generator = torch.Generator().manual_seed(0)
    data = torch.rand(48, 1, 6, 6, generator=generator)
    labels = torch.arange(8).repeat_interleave(6)[torch.randperm(48, generator=generator)]
    dataset = PairDataset(data, labels)
    options = dict(rotations=(0, 90, 180, 270), shuffle_examples=True, seed=11, transform=lambda x: x * 2)
    fast = EpisodeSampler(data, labels, 4, 2, 3, **options).sample_batch(5)
    slow = EpisodeSampler(dataset, labels, 4, 2, 3, **options).sample_batch(5)
    assert dataset.reads == 5 * 4 * 5
    for name in ("support_x", "support_y", "query_x", "query_y", "classes"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name


def test_dataset_label_mismatch_and_bad_items():
    data, labels = torch.rand(12, 2), torch.arange(3).repeat_interleave(4)
    shifted = EpisodeSampler(PairDataset(data, (labels + 1) % 3), labels, 2, 1, 1)
    with pytest.raises(ValueError, match=r"dataset item \d+ has label \d but labels\[\d+\] = \d"):
        shifted.sample()

    class Strings(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, index):
            return "image.png"

    with pytest.raises(TypeError, match="dataset item \\d+ is a str, not a tensor"):
        EpisodeSampler(Strings(), labels, 2, 1, 1).sample()


def test_works_on_a_shared_omniglot_split(shared_data):
    """The Vinyals split files name classes of both archives; ids must fall inside the augmented id space."""
    split_dir = shared_data / "omniglot" / "splits" / "vinyals"
    if not split_dir.is_dir():
        pytest.skip(f"no Vinyals split files in {split_dir}")
    names = {}
    for split in ("train", "val", "test"):
        names[split] = [
            line.strip() for line in (split_dir / f"{split}.txt").read_text().splitlines() if line.strip()
        ]
    check_disjoint_splits(**names)
    assert [len(v) for v in names.values()] == [1028 * 4, 172 * 4, 423 * 4]
    with pytest.raises(ValueError, match="'train' and 'trainval' share 4112 classes"):
        trainval = [
            line.strip() for line in (split_dir / "trainval.txt").read_text().splitlines() if line.strip()
        ]
        check_disjoint_splits(train=names["train"], trainval=trainval)


# ---------------------------------------------------------------------------------------------- bad input

DATA, LABELS = torch.rand(20, 3), torch.arange(5).repeat_interleave(4)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(ways=6), ValueError, "ways=6 but the class pool (split) has only 5 classes; lower ways"),
        (dict(ways=3, classes=[0, 1]), ValueError, "ways=3 but the class pool (split) has only 2 classes"),
        (
            dict(shots=3, queries=2),
            ValueError,
            "shots + queries = 3 + 2 = 5 examples per class are needed, but class 0 has 4",
        ),
        (dict(classes=[]), ValueError, "the class pool (classes) is empty"),
        (dict(classes=[1, 7]), ValueError, "classes [7] have no examples in labels"),
        (dict(classes=[1, 1, 2]), ValueError, "classes lists some ids more than once: [1]"),
        (dict(classes=["a", "b"]), TypeError, "classes must be integers"),
        (dict(ways=0), ValueError, "ways must be >= 1, got 0"),
        (dict(ways=-2), ValueError, "ways must be >= 1, got -2"),
        (dict(shots=0), ValueError, "shots must be >= 1, got 0"),
        (dict(queries=0), ValueError, "queries must be >= 1, got 0; episodes without query examples"),
        (dict(ways=2.0), TypeError, "ways must be a positive int, got float 2.0"),
        (dict(shots=True), TypeError, "shots must be a positive int, got True"),
        (dict(labels=LABELS.float()), TypeError, "labels must be integers, got dtype torch.float32"),
        (dict(labels=[0.5] * 20), TypeError, "labels must be integers, got dtype torch.float64"),
        (dict(labels=LABELS - 1), ValueError, "labels must be >= 0, found -1 at index 0"),
        (
            dict(labels=LABELS[:-1]),
            ValueError,
            "data has 20 examples but labels has 19; give one label per example",
        ),
        (dict(labels=LABELS[None]), ValueError, "labels must be 1-D, got shape (1, 20)"),
        (dict(data=DATA[:0], labels=LABELS[:0]), ValueError, "data is empty"),
        (dict(data=object()), TypeError, "data must be a tensor [n, ...] or a Dataset"),
        (dict(rotations=(0, 90)), ValueError, "rotations need examples with at least 2 (height, width) axes"),
        (
            dict(data=torch.rand(20, 1, 3, 4), rotations=(0, 90)),
            ValueError,
            "90/270-degree rotations need square images, got height x width = 3 x 4",
        ),
        (
            dict(data=torch.rand(20, 1, 3, 3), rotations=(0, 45)),
            ValueError,
            "rotations must be multiples of 90",
        ),
        (dict(data=torch.rand(20, 1, 3, 3), rotations=(0, 360)), ValueError, "repeat an angle (modulo 360)"),
        (dict(data=torch.rand(20, 1, 3, 3), rotations=()), ValueError, "rotations is empty"),
        (dict(rotations=(0,), augmentation=Rotations()), ValueError, "pass either rotations or augmentation"),
        (dict(augmentation=lambda x, v: x), TypeError, "augmentation must implement ClassAugmentation"),
        (dict(transform=3), TypeError, "transform must be callable"),
        (dict(batch_transform="float"), TypeError, "batch_transform must be callable"),
        (
            dict(precompute_augmentation=True),
            ValueError,
            "precompute_augmentation needs tensor data and a class",
        ),
    ],
)
def test_bad_input_is_named(kwargs, error, message):
    args = dict(data=DATA, labels=LABELS, ways=2, shots=1, queries=1)
    args.update(kwargs)
    with pytest.raises(error, match=re.escape(message)):
        EpisodeSampler(**args)


def test_bad_input_with_rotations_names_the_augmented_class():
    labels = torch.tensor([0] * 4 + [1] * 2)
    with pytest.raises(ValueError, match=re.escape("class 5 (label 1) has 2")):
        EpisodeSampler(
            torch.rand(6, 1, 2, 2), labels, 2, 2, 1, rotations=(0, 90, 180, 270), classes=[0, 1, 5]
        )
    with pytest.raises(
        ValueError, match=re.escape("classes [8] have no examples in labels (augmented ids label * 4")
    ):
        EpisodeSampler(torch.rand(6, 1, 2, 2), labels, 2, 1, 1, rotations=(0, 90, 180, 270), classes=[0, 8])


def test_bad_sampling_arguments():
    sampler = EpisodeSampler(DATA, LABELS, 2, 1, 1)
    with pytest.raises(ValueError, match="meta_batch must be >= 1, got 0"):
        sampler.sample_batch(0)
    with pytest.raises(ValueError, match="meta_batch must be >= 1, got -1"):
        sampler.sample_batch(-1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        sampler.sample(generator=3)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        sampler.fixed_tasks(0)


def test_check_disjoint_splits_names_the_overlap():
    check_disjoint_splits(train=[1, 2], val=torch.tensor([3]), test=[4, 5])
    with pytest.raises(ValueError, match=re.escape("'train' and 'test' share 2 classes [2, 7]")):
        check_disjoint_splits(train=[1, 2, 7], val=[3], test=[7, 2, 9])
    with pytest.raises(ValueError, match=re.escape("'a' and 'b' share 1 classes ['x']; 'b' and 'c' share")):
        check_disjoint_splits(a=["x"], b=["x", "y"], c=["y"])
    with pytest.raises(TypeError, match="split 'train' must be a list of class ids"):
        check_disjoint_splits(train="abc")


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_rotation_gather_equals_rotating_gathered_examples(dtype):
    generator = torch.Generator().manual_seed(4)
    data = torch.randint(0, 256, (30, 2, 3, 3), generator=generator).to(dtype)
    index = torch.randint(0, 30, (50,), generator=generator)
    variant = torch.randint(0, 3, (50,), generator=generator)
    rotations = Rotations((180, 0, 90))
    expected = torch.stack(
        [torch.rot90(data[i], (180, 0, 90)[v] // 90, dims=(-2, -1)) for i, v in zip(index, variant)]
    )
    assert torch.equal(rotations.gather(data, index, variant), expected)
    assert torch.equal(rotations(data[index], variant), expected)


@pytest.mark.slow
def test_vinyals_omniglot_episodes_from_shared_data(shared_data):
    """End to end on real Omniglot (Vinyals split, 4 rotation classes); slow: loads 32,460 images."""
    from attnmeta.data.omniglot import OMNIGLOT_ROTATIONS, Omniglot, vinyals_classes

    split_dir = shared_data / "omniglot" / "splits" / "vinyals"
    omniglot = Omniglot.combined(shared_data / "omniglot")
    splits = {name: vinyals_classes(omniglot, split_dir / f"{name}.txt") for name in ("train", "val", "test")}
    check_disjoint_splits(**splits)
    sampler = EpisodeSampler(
        omniglot.images,
        omniglot.labels,
        5,
        1,
        15,
        rotations=OMNIGLOT_ROTATIONS,
        classes=splits["test"],
        seed=0,
    )
    batch = sampler.sample_batch(32)
    assert batch.support_x.shape == (32, 5, 1, 28, 28) and batch.query_x.shape == (32, 75, 1, 28, 28)
    assert set(batch.classes.flatten().tolist()) <= set(splits["test"].tolist())
    for task in list(batch)[:8]:
        for example, label in zip(
            torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])
        ):
            character, variant = divmod(int(task.classes[label]), 4)
            original = torch.rot90(example, -variant, dims=(-2, -1))
            candidates = omniglot.images[omniglot.labels == character]
            assert (candidates == original).flatten(1).all(1).any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_cuda_tensor_path_equals_cpu_tensor_path(dtype):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 1, 6, 6), generator=generator).to(dtype)
    labels = torch.arange(20).repeat_interleave(10)
    options = dict(rotations=(0, 90, 180, 270), shuffle_examples=True, seed=4)
    cpu = EpisodeSampler(images, labels, 5, 2, 3, **options).sample_batch(16)
    cuda = EpisodeSampler(images.cuda(), labels, 5, 2, 3, **options).sample_batch(16)
    assert cuda.support_x.is_cuda and cuda.query_y.is_cuda
    for name in ("support_x", "support_y", "query_x", "query_y", "classes"):
        assert torch.equal(getattr(cpu, name), getattr(cuda, name).cpu()), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_precomputed_augmentation_gives_the_same_tasks(dtype):
    images = torch.randint(0, 256, (60, 1, 4, 4), generator=torch.Generator().manual_seed(5)).to(dtype)
    labels = torch.arange(6).repeat_interleave(10)
    options = dict(rotations=(0, 90, 180, 270), shuffle_examples=True, seed=2, classes=[1, 5, 8, 13, 22])
    plain = EpisodeSampler(images, labels, 3, 2, 2, **options).sample_batch(6)
    cached = EpisodeSampler(images, labels, 3, 2, 2, precompute_augmentation=True, **options).sample_batch(6)
    for name in ("support_x", "support_y", "query_x", "query_y", "classes"):
        assert torch.equal(getattr(plain, name), getattr(cached, name)), name


def test_batch_transform_keeps_uint8_data_and_gives_float_inputs():
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (60, 1, 4, 4), dtype=torch.uint8, generator=generator)
    labels = torch.arange(6).repeat_interleave(10)
    options = dict(rotations=(0, 90, 180, 270), shuffle_examples=True, seed=8)
    as_float = EpisodeSampler(images.float() / 255, labels, 3, 2, 2, **options).sample_batch(4)
    converted = EpisodeSampler(
        images, labels, 3, 2, 2, batch_transform=lambda x: x.float().div_(255), **options
    ).sample_batch(4)
    assert converted.support_x.dtype == torch.float32
    assert torch.equal(as_float.support_x, converted.support_x) and torch.equal(
        as_float.query_x, converted.query_x
    )
    broken = EpisodeSampler(images, labels, 3, 2, 2, batch_transform=lambda x: x[:1])
    with pytest.raises(
        TypeError, match="batch_transform must return a tensor \\[m, ...\\] with m = 6 examples"
    ):
        broken.sample()
