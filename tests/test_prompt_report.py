"""benchmarks/prompt_report.py cuts held-out texts inside their first block, continues each prompt, and scores the
continuations (given their prompts) beside the references' own; its echo test finds a prompt's end said again."""
import json
import sys

import pytest

from ldlm.data.corpus import restaurant_sentences


@pytest.mark.parametrize("prompt,continuation,echo", [
    ("The Eagle is a coffee shop", " coffee shop serving English food.", True),
    ("The Eagle is a coffee shop", " that serves coffee shop food.", True),  # the pair within reach
    ("The Eagle is a coffee shop", " shop near the river.", True),  # its last word at once
    ("The Eagle is a coffee shop", " serving English food in the city. It is a coffee shop.", False),  # beyond reach
    ("The Eagle is a coffee shop", " serving English food.", False),
    ("Zizzi", " is a pub.", False),
])
def test_echoes_finds_the_prompt_s_end_said_again(load_benchmark, prompt, continuation, echo):
    assert load_benchmark("prompt_report").echoes(prompt, continuation) is echo


def test_the_report_scores_continuations_of_prompts_shorter_than_a_block(make_pipeline, load_benchmark,
                                                                          teacher_dirs, tmp_path, monkeypatch):
    bench = load_benchmark("prompt_report")
    pipe = make_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps({"text": t}) + "\n" for t in restaurant_sentences(6, seed=0)))
    out = tmp_path / "prompts.json"
    argv = ["prompt_report.py", "--model", str(tmp_path / "pipe"), "--references", str(refs), "--prompts", "4",
            "--samples", "2", "--quick-start-samples", "3", "--steps", "2", "--ppl-model", teacher_dirs["qwen2"],
            "--output", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    result = json.loads(out.read_text())
    prompts = result["prompts"]
    assert len(prompts) == result["sampling"]["prompts"] == 4
    block = pipe.vae.config.block_length
    assert all(3 <= len(pipe.tokenizer(p, add_special_tokens=False)["input_ids"]) < block for p in prompts)
    assert len(result["continuations"]) == 8 and len(result["quick_start"]) == 3
    assert list(result["rows"]) == ["references (their own continuations)", "ldlm, 2 steps",
                                    "ldlm, quick-start prompt, 2 steps"]
    for row in result["rows"].values():
        assert row["gen_ppl"] > 1 and 0 <= row["echo_rate"] <= 1 and row["words"] > 0 and row["empty"] >= 0
        assert 0 < row["div"] <= 1
    cut = {t[: len(p)] for t in restaurant_sentences(6, seed=0) for p in prompts if t.startswith(p)}
    assert set(prompts) <= cut  # each prompt is the start of a reference, and its continuations follow it
    assert not any(c.startswith(p) for p in prompts for c in result["continuations"])
    with pytest.raises(SystemExit, match="exists; pass another --output"):
        bench.main()  # never overwrites a report
    monkeypatch.setattr(sys, "argv", argv[:-1] + [str(tmp_path / "no" / "b.json")])
    with pytest.raises(SystemExit, match="no folder"):
        bench.main()
