"""benchmarks/frontier_plot.py groups ledger rows by sampler across temperatures, compares two samplers at matched
entropy only where both lines reach, and refuses ledgers it cannot put side by side."""
import json
import math
import sys

import pytest


def _ledger(path, rows: dict[str, tuple[float, float]], references=("a text",), ppl_model="smollm2") -> str:
    body = {name: {"unigram_entropy": h, "gen_ppl": p} for name, (h, p) in {"references": (7.0, 96.0), **rows}.items()}
    path.write_text(json.dumps({"config": {"ppl_model": ppl_model}, "rows": body,
                                "samples": {"references": list(references)}}))
    return str(path)


def test_rows_are_grouped_by_sampler_with_only_the_temperature_split_off(load_benchmark):
    frontier = load_benchmark("frontier_plot")
    assert frontier.sampler_of("ldlm, 10 steps, T=0.95, w=3") == ("ldlm, 10 steps, w=3", 0.95)
    assert frontier.sampler_of("ldlm, 10 steps, w=3") == ("ldlm, 10 steps, w=3", 1.0)
    assert frontier.sampler_of("ldlm, 25 steps, snap 0.5, T=1e-05, w=2.5") == ("ldlm, 25 steps, snap 0.5, w=2.5", 1e-05)
    assert frontier.sampler_of("AR baseline, T=0.8") == ("AR baseline", 0.8)
    for other in ("VAE reconstruction, σ=0.3", "references", "sanity: training texts"):
        assert frontier.sampler_of(other) is None


def test_matched_entropy_ratio_interpolates_log_ppl_inside_both_lines(load_benchmark):
    frontier = load_benchmark("frontier_plot")
    fast = [(6.5, 200.0, 0.8), (6.9, 300.0, 1.0)]
    slow = [(6.4, 100.0, 1.0), (6.7, 150.0, 1.2)]
    ratios = dict(frontier.matched_ratios(fast, slow))
    assert set(ratios) == {6.5, 6.7}  # 6.4 is below the fast line, 6.9 above the slow one
    assert ratios[6.5] == pytest.approx(200.0 / math.exp((2 * math.log(100) + math.log(150)) / 3))
    assert ratios[6.7] == pytest.approx(math.exp((math.log(200) + math.log(300)) / 2) / 150.0)
    assert frontier.matched_ratios(fast, [(6.0, 90.0, 1.0), (6.2, 95.0, 1.1)]) == []
    assert frontier.monotone(fast) and not frontier.monotone([(6.5, 200.0, 0.8), (6.5, 210.0, 0.9)])


def test_lines_follow_temperature_across_ledgers(load_benchmark, tmp_path):
    frontier = load_benchmark("frontier_plot")
    a = _ledger(tmp_path / "a.json", {"ldlm, 10 steps, T=1.07, w=3": (6.9, 300.0),
                                      "VAE reconstruction, σ=0": (7.0, 99.0)})
    b = _ledger(tmp_path / "b.json", {"ldlm, 10 steps, T=0.9, w=3": (6.95, 250.0), "AR baseline, T=1": (7.8, 380.0)})
    lines, references = frontier.read_lines([a, b])
    assert lines == {"ldlm, 10 steps, w=3": [(6.95, 250.0, 0.9), (6.9, 300.0, 1.07)],
                     "AR baseline": [(7.8, 380.0, 1.0)]}
    assert references["gen_ppl"] == 96.0 and not frontier.monotone(lines["ldlm, 10 steps, w=3"])


@pytest.mark.parametrize("second, message", [
    ({"references": ("another text",)}, "other reference texts"),
    ({"ppl_model": "gpt2"}, "another LM"),
    ({"rows": {"ldlm, 10 steps": (6.8, 290.0)}}, "more than one ledger"),
])
def test_ledgers_that_cannot_be_put_side_by_side_are_refused(load_benchmark, tmp_path, second, message):
    frontier = load_benchmark("frontier_plot")
    a = _ledger(tmp_path / "a.json", {"ldlm, 10 steps": (6.9, 300.0)})
    b = _ledger(tmp_path / "b.json", **{"rows": {}, **second})
    with pytest.raises(SystemExit, match=message):
        frontier.read_lines([a, b])


def test_the_script_ends_bad_input_in_one_line_and_writes_the_plot(load_benchmark, tmp_path, monkeypatch, capsys):
    frontier = load_benchmark("frontier_plot")
    (tmp_path / "quality.json").write_text(json.dumps({"systems": {}}))
    monkeypatch.setattr(sys, "argv", ["frontier_plot.py", str(tmp_path / "quality.json")])
    with pytest.raises(SystemExit, match="is not a benchmarks/quality_ledger.py JSON"):
        frontier.main()
    a = _ledger(tmp_path / "a.json", {"ldlm, 10 steps, T=0.8": (6.5, 200.0), "ldlm, 10 steps": (6.9, 300.0),
                                      "ldlm, 100 steps": (6.5, 110.0), "ldlm, 100 steps, T=1.3": (6.8, 180.0)})
    out = tmp_path / "new" / "frontier.png"
    monkeypatch.setattr(sys, "argv", ["frontier_plot.py", a, "--compare", "ldlm, 10 steps", "ldlm, 100 steps",
                                      "--out", str(out)])
    frontier.main()
    assert "1.82× at 6.50 bits" in capsys.readouterr().out and out.stat().st_size > 0
