"""Real CLINC150 data (../shared/data/text/clinc150): loader, domain split, episodes, baseline, training.

Skipped when the shared data folder is absent."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest
import torch

from attnmeta.data.text import CLINC150_DOMAINS_DEFAULT_SPLIT, clinc150_domain_split, load_clinc150
from attnmeta.eval import evaluate
from attnmeta.learners.protonet import PrototypicalNetworks
from attnmeta.nn.text import TextEncoder, TextTokenizer, TfidfCentroid
from attnmeta.tasks.sampler import EpisodeSampler


@functools.lru_cache(maxsize=1)
def _prepared(root: Path):
    """Data, domain split, tokenizer (meta-train text only) and token tensor, built once per session."""
    data = load_clinc150(root)
    split = clinc150_domain_split(data)
    tokenizer = TextTokenizer.fit(data.subset(split["train"]).texts, word_buckets=1 << 12,
                                  ngram_buckets=1 << 12, max_words=24, pieces=8)
    tokens = tokenizer.trim(tokenizer.encode(data.texts))
    return root, data, split, tokenizer, tokens


@pytest.fixture
def clinc(shared_data):
    root = shared_data / "text" / "clinc150"
    if not (root / "data_full.json").is_file():
        pytest.skip(f"needs {root}/data_full.json (see ../shared/data/README.md)")
    return _prepared(root)


def test_clinc150_has_150_intents_in_10_domains_with_150_utterances_each(clinc):
    root, data, _, _, _ = clinc
    assert len(data) == 22500 and data.num_classes == 150
    assert torch.equal(torch.bincount(data.labels), torch.full((150,), 150))
    assert sorted(set(data.class_domains)) == sorted(d for part in CLINC150_DOMAINS_DEFAULT_SPLIT.values()
                                                     for d in part)
    assert data.class_names[data.labels[0]] == "translate"  # first train utterance of the official file
    with_oos = load_clinc150(root, splits=["train"], include_oos=True)
    assert len(with_oos) == 15000 + 100 and with_oos.class_names[-1] == "oos"


def test_domain_split_holds_out_whole_domains(clinc):
    _, data, split, tokenizer, _ = clinc
    assert [len(split[p]) for p in ("train", "val", "test")] == [90, 15, 45]
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
    assert {data.class_domains[c] for c in split["test"]} == {"travel", "utility", "work"}
    # words of the held-out domains the tokenizer never saw still get ids (hashed), e.g. "vaccines"
    test_words = {w for t in data.subset(split["test"]).texts for w in TextTokenizer.split_words(t)}
    unseen = [w for w in test_words if w not in tokenizer.word_to_id]
    assert "vaccines" in unseen and len(unseen) > 300
    with pytest.raises(ValueError, match="both 'train' and 'test'"):
        clinc150_domain_split(data, {"train": ["banking"], "test": ["banking"]})


def test_loader_checks_files_and_says_how_to_get_them(clinc, tmp_path):
    root = clinc[0]
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_clinc150(tmp_path)
    shutil.copy(root / "domains.json", tmp_path / "domains.json")
    (tmp_path / "data_full.json").write_text('{"train": []}')
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_clinc150(tmp_path)
    with pytest.raises(ValueError, match="splits must be"):
        load_clinc150(root, splits="train")


def test_episodes_of_token_tensors_and_tfidf_baseline_on_held_out_domains(clinc):
    _, data, split, _, tokens = clinc
    sampler = EpisodeSampler(tokens, data.labels, 5, 5, 15, classes=split["test"], seed=0)
    episodes = sampler.fixed_tasks(100, seed=0)
    task = episodes[0]
    assert task.support_x.shape == (25, *tokens.shape[1:]) and task.query_x.shape == (75, *tokens.shape[1:])
    assert set(task.classes.tolist()) <= set(split["test"])
    result = evaluate(TfidfCentroid(), episodes)
    # measured 0.8924 on these 100 episodes (600 episodes: 0.894 +/- 0.005, experiments/text/text_fewshot.py)
    assert 0.85 < result.mean < 0.93


def test_short_protonet_training_on_clinc_beats_the_untrained_encoder(clinc):
    _, data, split, tokenizer, tokens = clinc
    torch.manual_seed(0)
    encoder = TextEncoder(tokenizer.num_embeddings, dim=64, out_dim=64, heads=2, dropout=0.0)
    learner = PrototypicalNetworks(encoder)
    test = EpisodeSampler(tokens, data.labels, 5, 1, 15, classes=split["test"], seed=0).fixed_tasks(100)
    before = evaluate(learner, test).mean
    train = EpisodeSampler(tokens, data.labels, 10, 5, 5, classes=split["train"], seed=0)
    optimizer = torch.optim.Adam(learner.parameters(), lr=2e-3)
    for _ in range(30):
        loss = learner.meta_loss(train.sample_batch(2)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate(learner, test).mean
    # measured: 0.444 untrained -> 0.549 after 30 steps (5-way 1-shot, held-out domains)
    assert after > before + 0.05


def test_cli_trains_clinc150_and_the_predictor_takes_strings(clinc, tmp_path, capsys):
    import attnmeta
    from attnmeta.cli import main

    root = clinc[0]
    run = tmp_path / "run"
    assert main(["train", "clinc150", "--root", str(root), "--algo", "protonet", "--steps", "4",
                 "--eval-every", "2", "--eval-episodes", "5", "--test-episodes", "20", "--run-dir", str(run),
                 "--quiet"]) == 0
    assert "clinc150" in capsys.readouterr().out
    assert main(["eval", str(run), "--shots", "5", "--episodes", "10"]) == 0
    clf = attnmeta.load(run)
    assert clf.learner.distance == "cosine"   # the CLINC150 preset: cosine prototypes
    support = ["book a flight to paris", "i need a plane ticket to rome", "what is the weather today",
               "will it rain tomorrow", "play some jazz music", "put on my favourite playlist"]
    clf.fit(support, ["flight", "flight", "weather", "weather", "music", "music"])
    assert clf.predict(["find me flights to berlin", "is it going to rain", "play a song"]) == \
        ["flight", "weather", "music"]
    assert clf.predict_proba(["book a flight"]).shape == (1, 3)
    with pytest.raises(TypeError, match="pass strings"):
        clf.predict([3])
    with pytest.raises(ValueError, match="list of strings"):
        clf.predict("just one string")


def test_lexical_encoder_with_cosine_prototypes_beats_the_tfidf_baseline_before_training(clinc):
    from attnmeta.nn.text import LexicalEncoder, corpus_idf

    _, data, split, tokenizer, tokens = clinc
    train_rows = torch.isin(data.labels, torch.tensor(split["train"]))
    idf = corpus_idf(tokens[train_rows], tokenizer.num_embeddings)   # meta-train domains only
    encoder = LexicalEncoder(tokenizer.num_embeddings, idf=idf)
    learner = PrototypicalNetworks(encoder, distance="cosine")
    test = EpisodeSampler(tokens, data.labels, 5, 1, 15, classes=split["test"], seed=0).fixed_tasks(100)
    lexical, tfidf = evaluate(learner, test).mean, evaluate(TfidfCentroid(), test).mean
    # measured on these 100 episodes: 0.8115 (words + character trigrams, idf of meta-train text) vs 0.6936
    assert lexical > tfidf + 0.08
