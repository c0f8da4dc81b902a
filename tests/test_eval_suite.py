import json

import pytest

from ldlm.cli import main
from ldlm.data.corpus import restaurant_sentences
from ldlm.errors import LdlmError
from ldlm.evaluation.reconstruction import vae_reconstruction
from ldlm.evaluation.suite import evaluate_systems, evaluate_texts
from ldlm.pipelines.loading import SHIPPED, load_vae

TEXTS = ["The Eagle is a pub in the city centre.", "Zizzi is is a coffee shop"]
TRAIN = ["The Eagle is a pub in the riverside."]


def test_evaluate_texts_by_hand(tokenizer):
    row = evaluate_texts(TEXTS, references=restaurant_sentences(6, seed=5), train_texts=TRAIN, tokenizer=tokenizer,
                         block_length=4)
    assert row["num_texts"] == 2 and row["words_per_text"] == 7.5
    assert row["memorization_4"] == pytest.approx(4 / 9)  # 4 of the 6 four-grams of the first text, none of 3
    assert row["adjacent_duplicate_rate"] == pytest.approx(1 / 13)  # "is is" among 8 + 5 adjacent pairs
    # novel token bigrams: "the city", "city centre." | "Zizzi is", "is is", "a coffee", "coffee shop"
    assert row["novel_bigram_rate"] == pytest.approx(6 / 13)
    assert row["diversity"] == pytest.approx(12 / 13)  # "is a" twice among 13 bigrams; 3- and 4-grams unique
    assert row["repetition_rate_4"] == 0.0
    assert len(row["frequency_collapse"]["positions"]) == 4
    assert "gen_ppl" not in row and "mauve" not in row


def test_evaluate_systems_lines_systems_up(tokenizer):
    refs = restaurant_sentences(8, seed=5)
    rows = evaluate_systems({"ldlm": TEXTS, "ar": refs[:4]}, refs, TRAIN, tokenizer=tokenizer, block_length=4)
    assert list(rows) == ["ldlm", "ar", "references"]
    assert "frequency_collapse" in rows["ar"] and "frequency_collapse" not in rows["references"]
    assert rows["references"]["memorization_4"] == evaluate_texts(refs, train_texts=TRAIN)["memorization_4"]
    with pytest.raises(LdlmError, match="cannot be named"):
        evaluate_systems({"references": TEXTS}, refs)
    with pytest.raises(LdlmError, match="has no texts"):
        evaluate_systems({"ldlm": []})


def test_mauve_with_lm_features(teacher_dirs):
    pytest.importorskip("mauve")
    refs = restaurant_sentences(30, seed=5)
    same = evaluate_texts(refs, refs, mauve_features=teacher_dirs["qwen2"])["mauve"]
    other = evaluate_texts(["pub pub pub"] * 30, refs, mauve_features=teacher_dirs["qwen2"])["mauve"]
    assert same == pytest.approx(1.0) and other < 0.2


def test_vae_reconstruction_reports_accuracy_and_bleu(vae_dir):
    vae, tokenizer = load_vae(vae_dir)
    out = vae_reconstruction(vae, tokenizer, restaurant_sentences(5))
    assert {"acc_all", "exact_blocks", "bleu4"} <= out.keys() and all(0 <= out[k] <= 1 for k in ("acc_all", "bleu4"))


def _write(path, texts, jsonl=True):
    lines = [json.dumps({"text": t}) for t in texts] if jsonl else texts
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def files(tmp_path):
    return {"ldlm": _write(tmp_path / "ldlm.jsonl", TEXTS + restaurant_sentences(3, seed=7)),
            "ar": _write(tmp_path / "ar.txt", restaurant_sentences(4, seed=8), jsonl=False),
            "refs": _write(tmp_path / "refs.jsonl", restaurant_sentences(50, seed=9)),
            "train": _write(tmp_path / "train.jsonl", restaurant_sentences(200, seed=10)),
            "empty": _write(tmp_path / "empty.txt", ["", " "], jsonl=False)}


def test_eval_command_writes_a_report(tmp_path, files, vae_dir, teacher_dirs, capsys):
    output = tmp_path / "report.json"
    code = main(["eval", "--samples", files["ldlm"], files["ar"], "--model", vae_dir, "--references", files["refs"],
                 "--train", files["train"], "--ppl-model", teacher_dirs["qwen2"], "--mauve-features", "none",
                 "--output", str(output)])
    assert code == 0
    report = json.loads(output.read_text())
    assert list(report["systems"]) == ["ldlm", "ar", "references"]
    assert report["config"]["num_references"] == 5 and report["config"]["samples"] == [files["ldlm"], files["ar"]]
    for name in ("ldlm", "ar"):
        row = report["systems"][name]
        assert {"gen_ppl", "diversity", "distinct_2", "repetition_rate_4", "memorization_4", "adjacent_duplicate_rate",
                "novel_bigram_rate", "novel_trigram_rate", "frequency_collapse"} <= row.keys()
        assert len(row["frequency_collapse"]["positions"]) == 8  # the VAE's block length
    assert {"acc_all", "exact_blocks", "bleu4"} <= report["vae_reconstruction"].keys()
    out = capsys.readouterr().out
    assert "| texts | gen-PPL |" in out and "| ar |" in out and "drift by block position (ldlm)" in out


@pytest.mark.parametrize("extra,message", [
    (["--samples", "missing.jsonl"], "not found"),
    (["--samples", "missing.txt"], "samples file not found"),
    (["--samples", "{empty}"], "has no samples"),
    (["--samples", "{ldlm}", "--references", "nope.jsonl"], "corpus file not found"),
    (["--samples", "{ldlm}", "--mauve-features", "gpt2"], "--mauve-features must be one of"),
    (["--num-samples", "0"], "--num-samples must be a positive integer"),
    (["--samples", "{ldlm}", "--top-k", "-1"], "--top-k must be a positive integer"),
    (["--samples", "{ldlm}", "--mauve-features", "teacher", "--ppl-model", "none"], "cannot be 'none'"),
    (["--samples", "{ldlm}", "--output", "/nonexistent/dir/r.json"], "no such folder"),
])
def test_eval_errors_are_one_line(files, vae_dir, capsys, extra, message):
    extra = [arg.format(**files) for arg in extra]
    assert main(["eval", "--model", vae_dir, "--ppl-model", "none", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_eval_bad_model_folder(tmp_path, files, capsys):
    assert main(["eval", "--samples", files["ldlm"], "--model", str(tmp_path), "--ppl-model", "none"]) == 2
    assert "no exported VAE" in capsys.readouterr().err


@pytest.mark.skipif(not (SHIPPED / "model_index.json").is_file(), reason="no source checkout")
def test_eval_generates_from_the_shipped_pipeline(tmp_path, capsys):
    output = tmp_path / "report.json"
    assert main(["eval", "--num-samples", "3", "--steps", "2", "--ppl-model", "none", "--mauve-features", "none",
                 "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert len(report["samples"]["ldlm"]) == 3 and report["config"]["steps"] == 2
    assert report["systems"]["ldlm"]["num_texts"] == 3
