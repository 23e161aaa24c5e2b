"""Text few-shot pieces on small synthetic inputs: tokenizer, attention-pooling encoder, TF-IDF baseline,
(text, label) loaders. Real CLINC150 data: tests/test_text_clinc.py."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call, grad, vmap

from attnmeta.data.text import TextDataset, load_text_pairs, random_class_split, text_dataset_from_pairs
from attnmeta.learners.registry import build
from attnmeta.nn.text import LexicalEncoder, TextEncoder, TextTokenizer, TfidfCentroid, corpus_idf, word_ids
from attnmeta.tasks.episode import Task, TaskBatch

TRAIN_TEXTS = ["book a flight to paris", "book a hotel in rome", "what is my balance",
               "what is the weather", "play some music", "don't play that song"]


# Tokenizer --------------------------------------------------------------------------------------------------
def test_tokenizer_vocabulary_is_frequency_then_alphabetical_order():
    tok = TextTokenizer.fit(TRAIN_TEXTS)
    assert tok.vocab[:6] == ["a", "book", "is", "play", "what", "balance"]  # 2 each, then 1 each
    assert "don't" in tok.vocab  # inner apostrophe kept
    assert TextTokenizer.fit(TRAIN_TEXTS, max_vocab=2).vocab == ["a", "book"]
    assert TextTokenizer.fit(TRAIN_TEXTS, min_count=2).vocab == ["a", "book", "is", "play", "what"]


def test_encode_layout_padding_and_truncation():
    tok = TextTokenizer.fit(TRAIN_TEXTS, max_words=4, pieces=5)
    ids = tok.encode(["Book a FLIGHT!", "one two three four five six", ""])
    assert ids.shape == (3, 4, 5) and ids.dtype == torch.long
    assert ids[0, :3, 0].tolist() == [tok.word_to_id["book"], tok.word_to_id["a"], tok.word_to_id["flight"]]
    assert (ids[0, 3] == 0).all()                         # padding word
    assert (ids[1, :, 0] != 0).all()                      # truncated to 4 words
    assert (ids[2, 0, 0] != 0) and (ids[2, 1:] == 0).all()  # empty text -> one token
    # "<a>" has one trigram; "<book>" has 4 trigrams -> 1 + 4 pieces
    assert (ids[0, 1] != 0).sum() == 2 and (ids[0, 0] != 0).sum() == 5
    assert int(ids.max()) < tok.num_embeddings


def test_unknown_words_get_stable_distinct_hashed_ids_outside_the_vocabulary():
    tok = TextTokenizer.fit(TRAIN_TEXTS)
    other = TextTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    ids = tok.encode(["vaccines visa luggage", "luggage"])
    assert torch.equal(ids, other.encode(["vaccines visa luggage", "luggage"]))
    unknown = ids[0, :3, 0]
    assert (unknown > len(tok.vocab)).all() and len(set(unknown.tolist())) == 3
    assert ids[1, 0, 0] == ids[0, 2, 0]
    # shared character trigrams (<fl fli lig igh ght) between a known and an unknown word
    known, new = tok.word_pieces("flight"), tok.word_pieces("flights")
    assert new[0] != known[0] and len(known) == 7 and len(new) == 8
    assert len(set(known[1:]) & set(new[1:])) == 5


def test_tokenizer_rejects_bad_input():
    with pytest.raises(TypeError, match="one string"):
        TextTokenizer.fit("just one text")
    with pytest.raises(TypeError, match="expects strings"):
        TextTokenizer.fit(TRAIN_TEXTS).encode(["ok", 3])
    with pytest.raises(ValueError, match="max_words"):
        TextTokenizer(["a"], max_words=0)


def test_trim_drops_only_padding_columns():
    tok = TextTokenizer.fit(TRAIN_TEXTS)
    ids = tok.encode(["a b", "a b c"])
    assert tok.trim(ids).shape == (2, 3, tok.pieces) and torch.equal(tok.trim(ids), ids[:, :3])


# Encoder ----------------------------------------------------------------------------------------------------
def _encoder(tok: TextTokenizer, **kw) -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(tok.num_embeddings, dim=16, out_dim=8, heads=2, **kw).eval()


@pytest.mark.parametrize("self_attention", [True, False])
def test_encoder_output_is_independent_of_padding_and_batch(self_attention):
    tok = TextTokenizer.fit(TRAIN_TEXTS, max_words=12)
    encoder = _encoder(tok, self_attention=self_attention)
    ids = tok.encode(TRAIN_TEXTS)
    full = encoder(ids)
    assert full.shape == (6, 8)
    trimmed = encoder(tok.trim(ids))
    one = torch.cat([encoder(ids[i:i + 1]) for i in range(6)])
    assert torch.allclose(full, trimmed, atol=1e-6) and torch.allclose(full, one, atol=1e-6)
    assert encoder(ids.reshape(2, 3, *ids.shape[1:])).shape == (2, 3, 8)


def test_pooling_attention_is_a_distribution_over_real_words_only():
    tok = TextTokenizer.fit(TRAIN_TEXTS, max_words=10)
    encoder = _encoder(tok)
    ids = tok.encode(TRAIN_TEXTS)
    weights = encoder.attention(ids)                          # [6, heads, 10]
    lengths = (ids[..., 0] != 0).sum(1)
    assert torch.allclose(weights.sum(-1), torch.ones(6, 2))
    for i, n in enumerate(lengths.tolist()):
        assert (weights[i, :, n:] < 1e-12).all() and (weights[i, :, :n] > 0).all()


def test_encoder_gradients_match_finite_differences():
    tok = TextTokenizer.fit(TRAIN_TEXTS, max_words=8, pieces=4)
    encoder = _encoder(tok).double()
    ids = tok.encode(TRAIN_TEXTS[:3])
    params = {k: v.detach() for k, v in encoder.named_parameters()}
    names = ["pool_queries", "attn_qkv.weight", "output.bias"]

    def loss(selected):
        out = functional_call(encoder, {**params, **selected}, (ids,))
        return (out.sin() * torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape)).sum()

    analytic = grad(loss)({n: params[n] for n in names})
    eps = 1e-6
    for name in names:
        flat = params[name].flatten()
        for index in range(0, flat.numel(), max(1, flat.numel() // 5)):
            bump = torch.zeros_like(flat)
            bump[index] = eps
            plus = loss({name: (flat + bump).reshape(params[name].shape)})
            minus = loss({name: (flat - bump).reshape(params[name].shape)})
            numeric = (plus - minus) / (2 * eps)
            assert math.isclose(analytic[name].flatten()[index].item(), numeric.item(), rel_tol=1e-5,
                                abs_tol=1e-7), name
    # the used embedding rows get gradient, unused rows none
    emb_grad = grad(loss)({"embedding": params["embedding"]})["embedding"]
    used = torch.zeros(tok.num_embeddings, dtype=torch.bool)
    used[ids.flatten()] = True
    used[0] = False
    assert (emb_grad[~used] == 0).all() and (emb_grad[used].abs().sum(1) > 0).all()


def test_encoder_works_under_vmap_of_functional_call():
    tok = TextTokenizer.fit(TRAIN_TEXTS, max_words=8)
    encoder = _encoder(tok)
    ids = tok.encode(TRAIN_TEXTS).reshape(2, 3, 8, tok.pieces)
    params = dict(encoder.named_parameters())
    batched = vmap(lambda x: functional_call(encoder, params, (x,)))(ids)
    assert torch.allclose(batched, encoder(ids), atol=1e-6)


def test_encoder_rejects_bad_input():
    tok = TextTokenizer.fit(TRAIN_TEXTS)
    encoder = _encoder(tok)
    with pytest.raises(TypeError, match="int64"):
        encoder(torch.zeros(2, 4, 3))
    with pytest.raises(TypeError, match="encode strings first"):
        encoder(["a text"])
    with pytest.raises(ValueError, match="num_embeddings=tokenizer.num_embeddings"):
        TextEncoder(10, dim=16, heads=2)(tok.encode(["vaccines"]))
    with pytest.raises(ValueError, match="divisible"):
        TextEncoder(10, dim=10, heads=3)


# TF-IDF baseline -------------------------------------------------------------------------------------------
def _reference_tfidf_logits(support: list[list[str]], labels: list[int], queries: list[list[str]], ways: int):
    """Plain-Python TF-IDF nearest centroid (support-set smooth idf, cosine to the normalised centroid)."""
    vocab = sorted({w for doc in support for w in doc})
    df = Counter(w for doc in support for w in set(doc))
    idf = {w: math.log((1 + len(support)) / (1 + df[w])) + 1 for w in vocab}

    def vector(doc):
        counts = Counter(doc)
        v = [counts[w] * idf[w] for w in vocab]
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / norm for x in v]

    sums = [[0.0] * len(vocab) for _ in range(ways)]
    for doc, y in zip(support, labels):
        sums[y] = [a + b for a, b in zip(sums[y], vector(doc))]
    cents = [[x / (math.sqrt(sum(c * c for c in s)) or 1.0) for x in s] for s in sums]
    return [[sum(a * b for a, b in zip(vector(q), c)) for c in cents] for q in queries]


def test_tfidf_centroid_matches_a_plain_python_reference():
    support = ["book a flight to paris", "book flight now", "what is my balance", "balance please",
               "play some music", "play music play"]
    labels = [0, 0, 1, 1, 2, 2]
    queries = ["book me a flight", "my balance", "music now play", "unrelated words only"]
    tok = TextTokenizer.fit(TRAIN_TEXTS)
    task = Task(tok.encode(support), torch.tensor(labels), tok.encode(queries), torch.tensor([0, 1, 2, 0]),
                torch.tensor([7, 8, 9]))
    logits = TfidfCentroid().predict(task)
    split = TextTokenizer.split_words
    expected = _reference_tfidf_logits([split(s) for s in support], labels, [split(q) for q in queries], 3)
    assert torch.allclose(logits, torch.tensor(expected, dtype=torch.float32), atol=1e-6)
    assert logits.argmax(-1)[:3].tolist() == [0, 1, 2] and (logits[3] == 0).all()


def test_tfidf_centroid_with_corpus_idf_downweights_common_words():
    tok = TextTokenizer.fit(TRAIN_TEXTS)
    corpus = tok.encode(["the a", "the b", "the c", "the d", "z"])
    support = tok.encode(["the x", "the y"])
    task = Task(support, torch.tensor([0, 1]), tok.encode(["the"]), torch.tensor([0]), torch.tensor([0, 1]))
    plain = TfidfCentroid().predict(task)
    weighted = TfidfCentroid(corpus_tokens=corpus).predict(task)
    # "the" is in every corpus document: idf ln(6/5)+1 vs ln(6/1)+1 for unseen words
    idf_the, idf_rare = math.log(6 / 5) + 1, math.log(6) + 1
    cosine = idf_the / math.hypot(idf_the, idf_rare)
    assert torch.allclose(weighted, torch.tensor([[cosine, cosine]]), atol=1e-6)
    assert (plain > weighted).all()
    with pytest.raises(TypeError, match="not meta-learned"):
        TfidfCentroid().meta_loss(None)


def test_word_ids_channel():
    ids = torch.arange(24).reshape(2, 3, 4)
    assert torch.equal(word_ids(ids), ids[..., 0]) and torch.equal(word_ids(ids[..., 0]), ids[..., 0])


# Data: (text, label) files and class splits ---------------------------------------------------------------
def test_load_text_pairs_csv_json_jsonl_agree(tmp_path):
    pairs = [("hello there", "greet"), ("bye now", "leave"), ("hi, you", "greet")]
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("label,text\n" + "".join(f'{y},"{t}"\n' for t, y in pairs), encoding="utf-8")
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps({"train": [list(p) for p in pairs[:2]], "test": [list(pairs[2])]}))
    jsonl_path = tmp_path / "d.jsonl"
    jsonl_path.write_text("\n".join(json.dumps({"utt": t, "intent": y}) for t, y in pairs))
    for data in (load_text_pairs(csv_path), load_text_pairs(json_path),
                 load_text_pairs(jsonl_path, text_field="utt", label_field="intent")):
        assert data.texts == [t for t, _ in pairs]
        assert data.class_names == ["greet", "leave"] and data.labels.tolist() == [0, 1, 0]


def test_load_text_pairs_errors_say_what_to_fix(tmp_path):
    bad_csv = tmp_path / "b.csv"
    bad_csv.write_text("sentence,label\nhi,greet\n")
    with pytest.raises(ValueError, match="text_field="):
        load_text_pairs(bad_csv)
    bad_json = tmp_path / "b.json"
    bad_json.write_text(json.dumps([["only text"]]))
    with pytest.raises(ValueError, match=r"\(text, label\) pair"):
        load_text_pairs(bad_json)
    with pytest.raises(ValueError, match="unsupported file type"):
        (tmp_path / "x.txt").write_text("a")
        load_text_pairs(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        load_text_pairs(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="empty label"):
        text_dataset_from_pairs([("a text", "")])


def test_dataset_subset_relabels_and_checks():
    data = TextDataset(["a", "b", "c", "d"], torch.tensor([0, 1, 2, 1]), ["x", "y", "z"], ["d1", "d1", "d2"])
    sub = data.subset([2, 1])
    assert sub.texts == ["b", "c", "d"] and sub.labels.tolist() == [1, 0, 1] and sub.class_names == ["z", "y"]
    assert data.classes_in_domains(["d1"]) == [0, 1]
    with pytest.raises(ValueError, match="unknown domain"):
        data.classes_in_domains(["nope"])
    with pytest.raises(ValueError, match="one label per text"):
        TextDataset(["a"], torch.tensor([0, 0]), ["x"])


@settings(max_examples=40, deadline=None)
@given(num_classes=st.integers(1, 60), fractions=st.lists(st.floats(0, 1), min_size=1, max_size=4),
       seed=st.integers(0, 2**31 - 1))
def test_random_class_split_is_disjoint_sized_and_deterministic(num_classes, fractions, seed):
    total = sum(fractions) or 1.0
    sizes = {f"p{i}": int(num_classes * f / total) for i, f in enumerate(fractions)}
    split = random_class_split(num_classes, sizes, seed=seed)
    assert split == random_class_split(num_classes, sizes, seed=seed)
    ids = [c for part in split.values() for c in part]
    assert len(ids) == len(set(ids)) == sum(sizes.values()) and all(0 <= c < num_classes for c in ids)
    assert all(len(split[p]) == n for p, n in sizes.items())
    with pytest.raises(ValueError, match="sum to at most"):
        random_class_split(num_classes, {"a": num_classes + 1})


def test_frozen_embeddings_are_a_buffer_and_normalized_output_has_the_learned_norm():
    tok = TextTokenizer.fit(TRAIN_TEXTS)
    frozen = _encoder(tok, freeze_embeddings=True, normalize=True, scale=3.0)
    names = dict(frozen.named_parameters())
    assert "embedding" not in names and "log_scale" in names and "embedding" in dict(frozen.named_buffers())
    out = frozen(tok.encode(TRAIN_TEXTS))
    assert torch.allclose(out.norm(dim=-1), torch.full((6,), 3.0), atol=1e-5)
    out.sum().backward()
    assert frozen.pool_queries.grad is not None and frozen.pool_queries.grad.abs().sum() > 0


# Lexical encoder (meta-learned TF-IDF) and cosine ProtoNets -------------------------------------------------
def test_corpus_idf_counts_each_document_once():
    tok = TextTokenizer.fit(TRAIN_TEXTS, ngram_sizes=(), pieces=1)
    corpus = tok.encode(["play play music", "play", "what"])
    idf = corpus_idf(corpus, tok.num_embeddings)
    play, music, book = (tok.word_to_id[w] for w in ("play", "music", "book"))
    assert idf.shape == (tok.num_embeddings,)
    assert math.isclose(idf[play].item(), math.log(4 / 3) + 1, rel_tol=1e-6)   # in 2 of 3 documents
    assert math.isclose(idf[music].item(), math.log(4 / 2) + 1, rel_tol=1e-6)
    assert math.isclose(idf[book].item(), math.log(4) + 1, rel_tol=1e-6)       # never seen: largest idf
    with pytest.raises(ValueError, match="num_embeddings"):
        corpus_idf(corpus, 3)


def test_untrained_lexical_encoder_with_cosine_protonet_is_tfidf_nearest_centroid():
    tok = TextTokenizer.fit(TRAIN_TEXTS, ngram_sizes=(), pieces=1)
    corpus = tok.encode(TRAIN_TEXTS + ["what music", "book it"])
    support = ["book a flight to paris", "book flight now", "what is my balance", "balance please",
               "play some music", "play music play"]
    queries = ["book me a flight", "my balance", "music now play", "a flight and music"]
    task = Task(tok.encode(support), torch.tensor([0, 0, 1, 1, 2, 2]), tok.encode(queries),
                torch.tensor([0, 1, 2, 0]), torch.tensor([7, 8, 9]))
    encoder = LexicalEncoder(tok.num_embeddings, idf=corpus_idf(corpus, tok.num_embeddings), context_dim=4)
    learner = build("protonet", model=encoder, task_type="classification", distance="cosine", scale=1.0)
    logits = learner.predict(task)
    reference = TfidfCentroid(corpus_tokens=corpus).predict(task)
    # the baseline scores queries on the support vocabulary only: same cosines up to a positive factor per row
    assert torch.allclose(F.normalize(logits, dim=-1), F.normalize(reference, dim=-1), atol=1e-5)
    assert torch.equal(logits.argmax(-1), reference.argmax(-1))
    assert torch.allclose(encoder(task.support_x).norm(dim=-1), torch.full((6,), 4.0), atol=1e-5)


def test_lexical_encoder_learns_piece_weights_and_ignores_padding():
    tok = TextTokenizer.fit(TRAIN_TEXTS, max_words=12, pieces=4)
    torch.manual_seed(0)
    encoder = LexicalEncoder(tok.num_embeddings, context_dim=4)
    ids = tok.encode(TRAIN_TEXTS)
    out = encoder(ids)
    assert out.shape == (6, tok.num_embeddings) and encoder.out_features == tok.num_embeddings
    assert torch.allclose(out, encoder(tok.trim(ids)), atol=1e-6)
    assert torch.allclose(out, torch.cat([encoder(ids[i:i + 1]) for i in range(6)]), atol=1e-6)
    assert (out[:, 0] == 0).all() and ((out > 0).sum(1) > 1).all()       # padding id never used
    scores = encoder.scores(ids)
    assert torch.isinf(scores[ids == 0]).all() and torch.isfinite(scores[ids != 0]).all()
    learner = build("protonet", model=encoder, task_type="classification", distance="cosine")
    batch = Task(ids[:3], torch.tensor([0, 1, 2]), ids[3:], torch.tensor([0, 1, 2]), torch.arange(3))
    learner.meta_loss(TaskBatch.stack([batch])).loss.backward()
    used = torch.zeros(tok.num_embeddings, dtype=torch.bool)
    used[ids.flatten()] = True
    used[0] = False
    weight_grad = encoder.log_weight.grad
    assert (weight_grad[~used] == 0).all() and weight_grad[used].abs().sum() > 0
    assert encoder.query.grad.abs().sum() > 0 and encoder.channel.grad.abs().sum() > 0
    assert learner.log_scale.grad is not None


def test_lexical_encoder_with_a_dense_branch_and_bad_input():
    tok = TextTokenizer.fit(TRAIN_TEXTS)
    torch.manual_seed(0)
    dense = TextEncoder(tok.num_embeddings, dim=16, out_dim=8, heads=2, dropout=0.0)
    encoder = LexicalEncoder(tok.num_embeddings, dense=dense, dense_weight=0.5, scale=2.0)
    out = encoder(tok.encode(TRAIN_TEXTS))
    assert out.shape == (6, tok.num_embeddings + 8) and encoder.out_features == tok.num_embeddings + 8
    assert torch.allclose(out[:, -8:].norm(dim=-1), torch.full((6,), 1.0), atol=1e-5)   # 2.0 * 0.5
    with pytest.raises(ValueError, match="idf must be positive"):
        LexicalEncoder(tok.num_embeddings, idf=torch.zeros(tok.num_embeddings))
    with pytest.raises(ValueError, match="num_embeddings=tokenizer.num_embeddings"):
        LexicalEncoder(5)(tok.encode(["vaccines"]))
    with pytest.raises(ValueError, match="distance must be"):
        build("protonet", model=encoder, task_type="classification", distance="manhattan")


def test_text_backbone_by_name_with_a_zero_head_for_head_learners():
    from attnmeta.nn.backbones import build_backbone

    tok = TextTokenizer.fit(TRAIN_TEXTS, max_words=8, pieces=4)
    idf = [1.0] * tok.num_embeddings
    embed = build_backbone("text", in_shape=(8, 4), num_embeddings=tok.num_embeddings, idf=idf)
    assert isinstance(embed, LexicalEncoder)
    model = build_backbone("text", in_shape=(8, 4), out_features=3, num_embeddings=tok.num_embeddings)
    assert (model(tok.encode(TRAIN_TEXTS)) == 0).all()          # zero head: MAML starts from uniform logits
    maml = build("maml", model=model, task_type="classification", ways=3, adapt="head", inner_lr=0.5)
    task = Task(tok.encode(TRAIN_TEXTS[:3]), torch.tensor([0, 1, 2]), tok.encode(TRAIN_TEXTS[:3]),
                torch.tensor([0, 1, 2]), torch.arange(3))
    assert maml.predict(task).argmax(-1).tolist() == [0, 1, 2]   # one step on the head = nearest support
    attention = build_backbone("text", in_shape=(8, 4), num_embeddings=tok.num_embeddings,
                               encoder="attention", dim=16, heads=2)
    assert isinstance(attention, TextEncoder)
    with pytest.raises(ValueError, match="'lexical' or 'attention'"):
        build_backbone("text", in_shape=(8, 4), num_embeddings=tok.num_embeddings, encoder="bert")
