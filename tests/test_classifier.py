import json
import random

import pytest
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ldlm.data import IGNORE
from ldlm.data.label_windows import ClassifierDataModule, label_vocabulary, parse_mr
from ldlm.data.postags import COARSE_TAGS, LexiconTagger, char_tags, coarse_tag, token_tags
from ldlm.errors import LdlmError
from ldlm.pipelines.latent_classifier import LatentClassifier
from ldlm.pipelines.loading import load_classifier, load_vae
from ldlm.pipelines.text import split_words
from ldlm.training.classifier_trainer import ClassifierModule, train_classifier
from ldlm.training.config import ClassifierExperiment, load_config

NAMES = ["The Eagle", "Zizzi", "The Mill", "Aromi"]
FOODS = ["Italian", "French", "Chinese"]
AREAS = ["riverside", "city centre"]


def _tiny(task: str) -> LatentClassifier:
    labels = list(COARSE_TAGS) if task == "tagging" else ["food[Italian]", "food[French]", "area[riverside]"]
    return LatentClassifier(latent_channels=8, latents_per_block=2, block_length=8, max_blocks=3, task=task,
                            labels=labels, hidden_size=16, num_layers=1, num_heads=2)


def _e2e_file(path, count: int = 240) -> str:
    rng = random.Random(0)
    with open(path, "w") as handle:
        for _ in range(count):
            name, food, area = rng.choice(NAMES), rng.choice(FOODS), rng.choice(AREAS)
            mr = f"name[{name}], food[{food}], area[{area}]"
            handle.write(json.dumps({"mr": mr, "text": f"{name} is a pub serving {food} food in the {area}."}) + "\n")
    return str(path)


def _sentence(words: list[str], tags: list[str], text: str | None = None) -> dict:
    return {"text": text or " ".join(words), "tokens": words, "tags": tags}


def _brown_file(path, count: int = 30) -> str:
    rng = random.Random(0)
    with open(path, "w") as handle:
        for i in range(count):
            sentences = [_sentence([rng.choice(NAMES).split()[-1], "is", "a", "cheap", "pub", "near", "Zizzi", "."],
                                   ["np", "bez", "at", "jj", "nn", "in", "np", "."]) for _ in range(3)]
            handle.write(json.dumps({"id": f"d{i}", "genre": "test", "sentences": sentences}) + "\n")
    return str(path)


def _overrides(vae_dir: str, out, task: str, path: str, *extra: str) -> list[str]:
    return [f"vae={vae_dir}", f"task={task}", f"data.path={path}", "data.max_blocks=3", "data.holdout_every=5",
            "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.dropout=0.0",
            "train.max_steps=80", "train.batch_size=16", "train.lr=3e-3", "train.warmup_steps=5",
            "train.val_every=40", "train.checkpoint_every=40", "train.log_every=5", "train.progress_bar=false",
            "train.accelerator=cpu", f"train.output_dir={out}", *extra]


def test_output_shapes_pad_short_inputs_and_pass_gradients():
    torch.manual_seed(0)
    multilabel, tagging = _tiny("multilabel").eval(), _tiny("tagging").eval()
    multilabel.end_block.normal_()
    latents = torch.randn(2, 6, 8, requires_grad=True)
    assert multilabel(latents).shape == (2, 3)
    assert tagging(latents).shape == (2, 3 * 8, 12)
    assert tagging(latents[:, :2]).shape == (2, 8, 12)  # one block: its 8 token positions
    short = torch.cat([latents[:, :2], multilabel.end_block.expand(2, -1, -1).repeat(1, 2, 1)], 1)
    torch.testing.assert_close(multilabel(latents[:, :2]), multilabel(short))  # padded with the end block
    tagging(latents)[..., COARSE_TAGS.index("NOUN")].sum().backward()
    assert latents.grad.abs().sum() > 0
    for bad in (latents[:, :5], torch.randn(2, 8, 8)):
        with pytest.raises(LdlmError, match="reads up to 3 blocks of 2 latents"):
            multilabel(bad)
    assert multilabel.label_ids(["area[riverside]", "food[Italian]"]) == [2, 0]
    with pytest.raises(LdlmError, match="no label 'food\\[Thai\\]'"):
        multilabel.label_ids(["food[Thai]"])


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _tiny("tagging").eval()
    model.end_block.normal_()
    model.save_pretrained(tmp_path / "clf")
    files = sorted(p.name for p in (tmp_path / "clf").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = LatentClassifier.from_pretrained(tmp_path / "clf").eval()
    assert loaded.config.labels == COARSE_TAGS and loaded.config.task == "tagging"
    latents = torch.randn(3, 4, 8)
    torch.testing.assert_close(loaded(latents), model(latents))
    torch.testing.assert_close(loaded.end_block, model.end_block)
    frozen = load_classifier(tmp_path / "clf")
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    with pytest.raises(LdlmError, match="holds no exported latent classifier"):
        load_classifier(tmp_path)


def test_mr_parsing_and_label_vocabulary():
    assert parse_mr("name[Alimentum], area[city centre], familyFriendly[no], priceRange[£20-25]") == [
        "name[Alimentum]", "area[city centre]", "familyFriendly[no]", "priceRange[£20-25]"]
    assert parse_mr("customer rating[5 out of 5]") == ["customer rating[5 out of 5]"]
    mrs = ["food[Italian], area[riverside]"] * 5 + ["food[Thai]"] * 4
    assert label_vocabulary(mrs, 5) == ["area[riverside]", "food[Italian]"]
    with pytest.raises(LdlmError, match="cannot parse"):
        parse_mr("just some text")


@pytest.mark.parametrize("tag, coarse", [
    ("nn", "NOUN"), ("np$", "NOUN"), ("nn-tl", "NOUN"), ("nns-tl-hl", "NOUN"), ("vbd", "VERB"), ("md*", "VERB"),
    ("ppss+md", "PRON"), ("pps+bez-nc", "PRON"), ("pp$", "PRON"), ("at", "DET"), ("in-tl", "ADP"), ("jjt", "ADJ"),
    ("rb", "ADV"), ("*", "ADV"), ("cd-hl", "NUM"), ("cc", "CONJ"), ("cs", "CONJ"), ("to", "PRT"), ("rp", "PRT"),
    (".", "PUNCT"), ("``", "PUNCT"), ("---hl", "PUNCT"), (",-hl", "PUNCT"), ("fw-nn", "X"), ("uh", "X"),
])
def test_brown_tags_map_to_coarse_classes(tag, coarse):
    assert coarse_tag(tag) == coarse


def test_word_tags_reach_every_subword_token():
    vocab = {w: i for i, w in enumerate(["[UNK]", "<eos>", "The", "jury", "said", '"', "no", "ev", "##id", "##ence",
                                         "Today", "."])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="[UNK]")
    doc = [_sentence(["The", "jury", "said", "``", "no", "evidence", "''", "."],
                     ["at", "nn", "vbd", "``", "at", "nn", "''", "."], 'The jury said "no evidence".'),
           _sentence(["Today", "."], ["nr", "."])]
    text, chars = char_tags(doc)
    assert text == 'The jury said "no evidence". Today .' and chars[3] == -1 and len(chars) == len(text)
    [(ids, tags)] = token_tags([doc], tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids[4:8]) == ["no", "ev", "##id", "##ence"]
    assert ids[-1] == tokenizer.eos_token_id and tags[-1] == IGNORE and len(ids) == len(tags)
    names = [COARSE_TAGS[t] for t in tags[:-1]]
    assert names == ["DET", "NOUN", "VERB", "PUNCT", "DET", "NOUN", "NOUN", "NOUN", "PUNCT", "PUNCT", "NOUN",
                     "PUNCT"]


def test_lexicon_tagger(tmp_path):
    docs = [[_sentence(["They", "run", "a", "run", "."], ["ppss", "vb", "at", "nn", "."]),
             _sentence(["We", "run", "``", "fast", "''"], ["ppss", "vb", "``", "rb", "''"])]]
    tagger = LexiconTagger.from_documents(docs)
    assert tagger.tag(["RUN", "they", '"', "42nd", "!?", "zebra", "Fast"]) == [
        "VERB", "PRON", "PUNCT", "NUM", "PUNCT", "NOUN", "ADV"]
    assert tagger.accuracy(docs) == pytest.approx(9 / 10)
    tagger.save(tmp_path / "lexicon.json")
    assert LexiconTagger.load(tmp_path / "lexicon.json").lexicon == tagger.lexicon
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(LdlmError, match="not a lexicon tagger file"):
        LexiconTagger.load(tmp_path / "bad.json")
    assert split_words("Atlanta's well-known 1,000 cafés, \"cheap\".") == [
        "Atlanta's", "well-known", "1,000", "cafés", ",", '"', "cheap", '".']
    brown = _brown_file(tmp_path / "brown.jsonl", count=4)
    assert LexiconTagger.from_brown(brown).tag(["pub"]) == ["NOUN"]


def test_tagging_windows_cover_token_positions(vae_dir, tmp_path):
    brown = _brown_file(tmp_path / "brown.jsonl")
    cfg = load_config(ClassifierExperiment, None, _overrides(vae_dir, tmp_path, "tagging", brown))
    vae, tokenizer = load_vae(vae_dir)
    data = ClassifierDataModule("tagging", cfg.data, vae, tokenizer, 8)
    data.setup()
    assert data.labels == COARSE_TAGS
    assert data.train_set.latents.shape[1:] == (6, 8) and data.train_set.targets.shape[1] == 24
    assert len(data.val_set) == 6  # documents 0, 5, ..., 25: one 25-token stream each → one 24-token window + EOS
    first = data.val_set.targets[0].tolist()  # "Eagle is a cheap pub near Zizzi ." three times
    assert [COARSE_TAGS[t] for t in first[:8]] == ["NOUN", "VERB", "DET", "ADJ", "NOUN", "ADP", "NOUN", "PUNCT"]
    assert IGNORE not in first


def _val_loss(module: ClassifierModule, data: ClassifierDataModule) -> float:
    with torch.no_grad():
        return float(torch.stack([module._common_step(b, noise=False)[0] for b in data.val_dataloader()]).mean())


@pytest.mark.parametrize("task", ["multilabel", "tagging"])
def test_short_training_lowers_the_loss_and_exports(vae_dir, tmp_path, task):
    path = _e2e_file(tmp_path / "e2e.jsonl") if task == "multilabel" else _brown_file(tmp_path / "brown.jsonl")
    out = tmp_path / "run"
    cfg = load_config(ClassifierExperiment, None, _overrides(vae_dir, out, task, path))
    assert train_classifier(cfg) == out / "classifier"
    vae, tokenizer = load_vae(vae_dir)
    trained = LatentClassifier.from_pretrained(out / "classifier")
    assert load_classifier(out).config == trained.config
    torch.testing.assert_close(trained.end_block, vae.end_block_latents())
    data = ClassifierDataModule(task, cfg.data, vae, tokenizer, 16)
    data.setup()
    torch.manual_seed(0)
    fresh = LatentClassifier.from_config(trained.config)
    container = OmegaConf.to_container(cfg)
    loss, untrained = (_val_loss(ClassifierModule(model, container), data) for model in (trained, fresh))
    assert loss < 0.7 * untrained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 80 and 0 <= metrics["val/f1"] <= 1 and "val/accuracy" in metrics
    if task == "multilabel":
        assert trained.config.labels == sorted(
            [f"name[{n}]" for n in NAMES] + [f"food[{f}]" for f in FOODS] + [f"area[{a}]" for a in AREAS])
        assert "val/accuracy_food" in metrics
    assert (out / "checkpoints" / "last.safetensors").is_file()


@pytest.mark.parametrize("override, message", [
    ("task=regression", "task must be one of multilabel, tagging, got 'regression'"),
    ("model.hidden_size=31", "model.hidden_size 31 is not a multiple of model.num_heads 2"),
    ("data.holdout_every=1", "data.holdout_every must be at least 2"),
    ("data.path=missing.jsonl", "E2E corpus file not found: missing.jsonl"),
    ("data.noise_prob=2", "data.noise_prob must lie in"),
])
def test_bad_config_is_one_clear_error(vae_dir, tmp_path, override, message):
    cfg = load_config(ClassifierExperiment, None,
                      _overrides(vae_dir, tmp_path / "run", "multilabel", _e2e_file(tmp_path / "e2e.jsonl"), override))
    with pytest.raises(LdlmError) as err:
        train_classifier(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)
