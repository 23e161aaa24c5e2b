"""Regression task families: distributions (Kolmogorov-Smirnov, fixed seed), functions, noise, corruption."""

from __future__ import annotations

import math

import pytest
import torch

from attnmeta.tasks import MULTIMODAL_KINDS, Multimodal, Sinusoid, fixed_episodes

# Kolmogorov-Smirnov critical value at significance 0.001: D_crit = 1.949 / sqrt(n) (asymptotic).
KS_COEFFICIENT = 1.949


def ks_uniform(samples: torch.Tensor, low: float, high: float) -> float:
    """Kolmogorov-Smirnov statistic of ``samples`` against U[low, high]."""
    cdf = ((samples.double().flatten().sort().values - low) / (high - low)).clamp(0, 1)
    n = cdf.numel()
    above = torch.arange(1, n + 1, dtype=torch.float64) / n - cdf
    below = cdf - torch.arange(n, dtype=torch.float64) / n
    return float(torch.maximum(above, below).max())


def ks_critical(n: int) -> float:
    return KS_COEFFICIENT / math.sqrt(n)


def test_ks_statistic_against_known_values():
    assert ks_uniform(torch.tensor([0.5]), 0, 1) == pytest.approx(0.5)
    assert ks_uniform(torch.tensor([0.1, 0.6]), 0, 1) == pytest.approx(0.4)
    evenly = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    assert ks_uniform(evenly, 0, 1) == pytest.approx(0.0005)


def test_sinusoid_follows_the_maml_distributions():
    n = 3000
    tasks = Sinusoid(shots=5, queries=5).fixed_tasks(n, seed=0)
    amplitude = torch.tensor([t.info["amplitude"] for t in tasks])
    phase = torch.tensor([t.info["phase"] for t in tasks])
    x = torch.cat([torch.cat([t.support_x, t.query_x]) for t in tasks])
    assert ks_uniform(amplitude, 0.1, 5.0) < ks_critical(n)
    assert ks_uniform(phase, 0.0, math.pi) < ks_critical(n)
    assert ks_uniform(x, -5.0, 5.0) < ks_critical(x.numel())
    assert amplitude.min() >= 0.1 and amplitude.max() <= 5.0 and phase.min() >= 0 and phase.max() <= math.pi
    # the test has power: a phase range of [0, 2 pi] or amplitudes up to 4 are rejected
    assert ks_uniform(phase, 0.0, 2 * math.pi) > ks_critical(n)
    assert ks_uniform(amplitude, 0.1, 4.0) > ks_critical(n)
    for task in tasks[:50]:
        a, p = task.info["amplitude"], task.info["phase"]
        for xs, ys in [(task.support_x, task.support_y), (task.query_x, task.query_y)]:
            torch.testing.assert_close(ys, (a * torch.sin(xs.double() - p)).float(), atol=1e-5, rtol=1e-5)
        assert (
            task.support_x.shape == (5, 1)
            and task.query_y.shape == (5, 1)
            and task.support_x.dtype == torch.float32
        )
        assert task.info["corrupted"] is False and task.ways == 0


def test_multimodal_kinds_parameters_and_functions():
    n = 2500
    tasks = Multimodal(shots=4, queries=6).fixed_tasks(n, seed=1)
    counts = torch.tensor(
        [sum(t.info["kind"] == k for t in tasks) for k in MULTIMODAL_KINDS], dtype=torch.float64
    )
    chi2 = float(((counts - n / 5) ** 2 / (n / 5)).sum())
    assert chi2 < 18.47  # chi-square, 4 degrees of freedom, p = 0.001
    by_kind = {k: [t for t in tasks if t.info["kind"] == k] for k in MULTIMODAL_KINDS}
    ranges = {
        "amplitude": (0.1, 5.0),
        "phase": (0.0, math.pi),
        "slope": (-3.0, 3.0),
        "intercept": (-3.0, 3.0),
        "center": (-3.0, 3.0),
        "bias": (-3.0, 3.0),
    }
    functions = {
        "sinusoid": lambda i, x: i["amplitude"] * torch.sin(x - i["phase"]),
        "linear": lambda i, x: i["slope"] * x + i["intercept"],
        "quadratic": lambda i, x: i["scale"] * (x - i["center"]) ** 2 + i["bias"],
        "abs": lambda i, x: i["slope"] * (x - i["center"]).abs() + i["bias"],
        "tanh": lambda i, x: i["slope"] * torch.tanh(x - i["center"]) + i["bias"],
    }
    for kind, group in by_kind.items():
        for name, (low, high) in ranges.items():
            if name in group[0].info:
                values = torch.tensor([t.info[name] for t in group])
                assert ks_uniform(values, low, high) < ks_critical(len(group)), (kind, name)
        for task in group[:30]:
            assert task.info["kind_index"] == MULTIMODAL_KINDS.index(kind)
            x = torch.cat([task.support_x, task.query_x]).double()
            y = torch.cat([task.support_y, task.query_y])
            torch.testing.assert_close(y, functions[kind](task.info, x).float(), atol=1e-4, rtol=1e-5)
    scale = torch.tensor([t.info["scale"] for t in by_kind["quadratic"]])
    assert ks_uniform(scale.abs(), 0.02, 0.15) < ks_critical(scale.numel())
    assert abs(float((scale > 0).double().mean()) - 0.5) < 3.3 * 0.5 / math.sqrt(scale.numel())
    only = Multimodal(kinds=("linear", "tanh")).fixed_tasks(200, seed=0)
    assert {t.info["kind"] for t in only} == {"linear", "tanh"}


def test_label_noise_has_the_stated_std():
    clean = Sinusoid(shots=10, queries=10).fixed_tasks(300, seed=2)
    noisy = Sinusoid(shots=10, queries=10, noise_std=0.3).fixed_tasks(300, seed=2)
    residual = []
    for task in noisy:
        a, p = task.info["amplitude"], task.info["phase"]
        x = torch.cat([task.support_x, task.query_x]).double()
        residual.append(torch.cat([task.support_y, task.query_y]).double() - a * torch.sin(x - p))
    residual = torch.cat(residual)
    std = float(residual.std())
    assert abs(std - 0.3) < 4 * 0.3 / math.sqrt(2 * residual.numel())  # standard error of the std
    assert abs(float(residual.mean())) < 4 * 0.3 / math.sqrt(residual.numel())
    assert not torch.equal(clean[0].support_y, noisy[0].support_y)


def test_corrupt_fraction_of_tasks():
    n, fraction = 2000, 0.25
    tasks = Sinusoid(shots=10, queries=10, corrupt_fraction=fraction, corruption_std=2.0).fixed_tasks(
        n, seed=3
    )
    corrupted = [t for t in tasks if t.info["corrupted"]]
    assert abs(len(corrupted) / n - fraction) < 4 * math.sqrt(fraction * (1 - fraction) / n)
    clean = [t for t in tasks if not t.info["corrupted"]]
    for task in clean[:20]:
        expected = task.info["amplitude"] * torch.sin(task.query_x.double() - task.info["phase"])
        torch.testing.assert_close(task.query_y, expected.float(), atol=1e-5, rtol=1e-5)
    targets = torch.cat([torch.cat([t.support_y, t.query_y]) for t in corrupted]).double()
    assert abs(float(targets.std()) - 2.0) < 0.1
    # corrupted targets do not follow the task's function
    task = corrupted[0]
    expected = task.info["amplitude"] * torch.sin(task.query_x - task.info["phase"])
    assert float((task.query_y - expected).abs().max()) > 0.1


def test_fixed_tasks_batches_and_resume():
    family = Sinusoid(shots=3, queries=4, seed=5)
    first = family.fixed_tasks(20, seed=9)
    family.sample_batch(4)
    again = fixed_episodes(Sinusoid(shots=3, queries=4, seed=0), 20, seed=9)
    assert all(torch.equal(a.query_y, b.query_y) for a, b in zip(first, again))
    batch = family.sample_batch(8)
    assert (
        batch.support_x.shape == (8, 3, 1)
        and batch.query_y.shape == (8, 4, 1)
        and batch.classes.shape == (8, 0)
    )
    state = family.state_dict()
    expected = family.sample_batch(3)
    other = Sinusoid(shots=3, queries=4, seed=1)
    other.load_state_dict(state)
    assert torch.equal(other.sample_batch(3).query_y, expected.query_y)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(shots=0), ValueError, "shots must be >= 1, got 0"),
        (dict(queries=-1), ValueError, "queries must be >= 1, got -1"),
        (dict(shots=2.5), TypeError, "shots must be a positive int, got float 2.5"),
        (dict(corrupt_fraction=1.5), ValueError, "corrupt_fraction must be in [0, 1]"),
        (dict(noise_std=-0.1), ValueError, "noise_std must be >= 0"),
        (dict(corruption_std=0.0), ValueError, "corruption_std must be > 0"),
    ],
)
def test_bad_family_arguments(kwargs, error, message):
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        Sinusoid(**kwargs)


def test_bad_sampling_and_kinds():
    with pytest.raises(ValueError, match="meta_batch must be >= 1, got 0"):
        Sinusoid().sample_batch(0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        Sinusoid().sample(generator=1)
    with pytest.raises(ValueError, match="kinds must be a non-empty subset"):
        Multimodal(kinds=("sinusoid", "cubic"))
