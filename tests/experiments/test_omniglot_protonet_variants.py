"""The recipe variants of ``experiments/omniglot/omniglot_protonet_variants.py`` (no data needed)."""

from __future__ import annotations

import argparse

import pytest
import torch

from attnmeta.nn.backbones import Conv4
from attnmeta.tasks import EpisodeSampler


@pytest.fixture(scope="module")
def variants(experiment):
    return experiment("omniglot", "omniglot_protonet_variants")


def unpooled_conv4() -> Conv4:
    torch.manual_seed(0)
    return Conv4((1, 28, 28), hidden=8, norm="fused", pool_last=False)


def test_variant_specs_parse_or_say_what_each_takes(variants):
    assert variants.parse_variant("no-final-relu") == ("no-final-relu", ())
    assert variants.parse_variant("progressive:20:10") == ("progressive", (20.0, 10.0))
    with pytest.raises(argparse.ArgumentTypeError, match="unknown variant 'wider'; choose from"):
        variants.parse_variant("wider")
    with pytest.raises(argparse.ArgumentTypeError, match="progressive takes 2 positive value"):
        variants.parse_variant("progressive:20")
    with pytest.raises(argparse.ArgumentTypeError, match="must be numbers"):
        variants.parse_variant("adamw:lots")


def test_model_variants_change_the_embedding_as_documented(variants):
    x = torch.rand(6, 1, 28, 28)
    plain = unpooled_conv4()
    assert plain(x).shape == (6, 72) and bool((plain(x) >= 0).all())
    signed = variants.without_final_relu(unpooled_conv4())(x)
    assert signed.shape == (6, 72) and bool((signed < 0).any())
    wide = variants.with_last_block_width(unpooled_conv4(), 32, norm="fused")
    assert wide(x).shape == (6, 32 * 9) and wide.feature_dim == 32 * 9
    model = unpooled_conv4()
    third = model.blocks[:3](x).flatten(1)
    both = variants.concat_blocks_3_4(model)
    out = both(x)
    assert out.shape == (6, 144) and both.feature_dim == 144
    torch.testing.assert_close(out[:, :72], third)
    small = variants.any_input_size(unpooled_conv4())(torch.rand(6, 1, 20, 20))
    assert small.shape == (6, 8 * 2 * 2)


def test_progressive_resize_shrinks_until_the_cut_then_passes_through(variants):
    now = [100.0]
    resize = variants.progressive_resize(20, minutes=1.0, clock=lambda: now[0])
    x = torch.rand(4, 1, 28, 28)
    assert resize(x).shape == (4, 1, 20, 20)  # the clock starts at the first call
    now[0] = 159.0
    assert resize(x).shape == (4, 1, 20, 20)
    now[0] = 160.0
    assert resize(x) is x


def test_alphabet_episodes_draw_every_class_from_the_chosen_alphabets(variants):
    # 12 characters in 4 alphabets of 3, x4 rotations: 48 classes; 20-way episodes from 2 alphabets (24)
    labels = torch.arange(12).repeat_interleave(2)
    images = torch.rand(24, 1, 8, 8)
    sampler = EpisodeSampler(images, labels, ways=20, shots=1, queries=1, rotations=(0, 90, 180, 270),
                             seed=0)
    alphabet = torch.arange(4).repeat_interleave(3)  # alphabet of each character
    variants.draw_from_alphabets(sampler, alphabet, alphabets=2)
    seen = set()
    for task in sampler.sample_batch(30):
        used = alphabet[task.classes // 4].unique()
        assert len(used) == 2
        seen.add(tuple(used.tolist()))
    assert len(seen) > 3  # different pairs of alphabets, not one fixed pair
    with pytest.raises(ValueError, match="fewer than the 20 classes"):
        variants.draw_from_alphabets(EpisodeSampler(images, labels, ways=20, shots=1, queries=1,
                                                    rotations=(0, 90, 180, 270)), alphabet, alphabets=1)


def test_alphabet_indices_group_characters_by_alphabet_name(variants):
    names = ["Greek/character01", "Latin/character01", "Greek/character02"]
    assert variants.alphabet_indices(names).tolist() == [0, 1, 0]
