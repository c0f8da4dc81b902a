"""The fluency–diversity frontier from quality_ledger.py JSONs (no new measurement): gen-PPL against unigram entropy,
one line per sampler across its temperatures (ldlm at each step count, the AR baseline), and one sampler's gen-PPL
over another's at matched entropy.

    python benchmarks/frontier_plot.py docs/img/ledger-v13.json docs/img/ledger-v13-10-temps.json \
        docs/img/ledger-v13-100-temps.json --compare "ldlm, 10 steps, w=3" "ldlm, 100 steps, w=3"

A sampler that writes less varied text reads lower gen-PPL, so two samplers are compared at the same unigram entropy:
log gen-PPL is interpolated linearly in entropy along each line, inside the range both lines cover; a line whose
entropy does not rise with its temperature has no single reading and is not compared. Every ledger must score the same
reference texts under the same LM, and each sampler and temperature may come from one ledger only; VAE rows are left
out.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from bench_common import plain_log_ticks

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"[-+\d.e]+"  # as Python's :g writes a float
SAMPLER = re.compile(rf"(?P<sampler>ldlm, \d+ steps(?:, snap {NUMBER})?|AR baseline)(?:, T=(?P<t>{NUMBER}))?"
                     r"(?P<rest>.*)")

Point = tuple[float, float, float]  # (unigram entropy, gen-PPL, temperature)


def sampler_of(name: str) -> tuple[str, float] | None:
    """(sampler, temperature) of a ledger row name, the sampler keeping any setting but the temperature (e.g. the
    autoguidance weight); None for rows that are not samples (references, VAE reconstructions)."""
    match = SAMPLER.fullmatch(name)
    if match is None:
        return None
    return match["sampler"] + match["rest"], float(match["t"] or 1.0)


def read_lines(paths: list[str]) -> tuple[dict[str, list[Point]], dict]:
    """Each sampler's points in order of temperature, from all ledgers, and the references' row."""
    lines: dict[str, dict[float, Point]] = {}
    first = None
    for path in paths:
        try:
            ledger = json.loads(Path(path).read_text())
            scored = (ledger["samples"]["references"], ledger["config"]["ppl_model"])
            rows, references = ledger["rows"], ledger["rows"]["references"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SystemExit(f"{path} is not a benchmarks/quality_ledger.py JSON") from None
        if first is not None and scored != first[1]:
            raise SystemExit(f"{path} scores other reference texts, or under another LM, than {first[0]}")
        first = first or (path, scored)
        for name, row in rows.items():
            if (parsed := sampler_of(name)) is not None:
                sampler, temperature = parsed
                if temperature in lines.setdefault(sampler, {}):
                    raise SystemExit(f"{name!r} appears in more than one ledger; pass one of them")
                lines[sampler][temperature] = (row["unigram_entropy"], row["gen_ppl"], temperature)
    return {s: [points[t] for t in sorted(points)] for s, points in lines.items()}, references


def monotone(line: list[Point]) -> bool:
    """Whether entropy rises strictly with temperature along ``line``."""
    return all(h0 < h1 for (h0, _, _), (h1, _, _) in zip(line, line[1:]))


def log_ppl_at(line: list[Point], entropy: float) -> float | None:
    """log gen-PPL of a monotone ``line`` at ``entropy``, linear between its neighbouring points; None outside it."""
    if len(line) == 1:
        return math.log(line[0][1]) if line[0][0] == entropy else None
    for (h0, p0, _), (h1, p1, _) in zip(line, line[1:]):
        if h0 <= entropy <= h1:
            w = (entropy - h0) / (h1 - h0)
            return (1 - w) * math.log(p0) + w * math.log(p1)
    return None


def matched_ratios(a: list[Point], b: list[Point]) -> list[tuple[float, float]]:
    """(entropy, gen-PPL of ``a`` ÷ that of ``b``) at each point of either monotone line inside both lines' range."""
    ratios = []
    for h in sorted({h for h, _, _ in a + b}):
        la, lb = log_ppl_at(a, h), log_ppl_at(b, h)
        if la is not None and lb is not None:
            ratios.append((h, math.exp(la - lb)))
    return ratios


def plot(lines: dict[str, list[Point]], references: dict, path: Path) -> None:
    """gen-PPL against unigram entropy: one line per sampler through its temperatures, the references as a star and
    the band within 5 % of their entropy shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    band = 0.95 * references["unigram_entropy"]
    ax.axvspan(band, references["unigram_entropy"], color="0.92", label="within 5 % of the references' entropy")
    for sampler, points in lines.items():
        style = "ks--" if sampler.startswith("AR") else "o-"
        ax.plot([h for h, _, _ in points], [p for _, p, _ in points], style, label=sampler, markersize=4)
        for h, p, t in points:
            ax.annotate(f"T={t:g}", (h, p), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.plot([references["unigram_entropy"]], [references["gen_ppl"]], "r*", markersize=10, label="held-out references")
    ax.set_yscale("log")
    plain_log_ticks(ax.yaxis, (1.0, 1.5, 2.0, 3.0, 5.0, 7.0))
    ax.set_xlabel("unigram entropy (bits, pooled tokens; higher is more varied)")
    ax.set_ylabel("gen-PPL under SmolLM2 (lower is more fluent)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ledgers", nargs="+", help="quality_ledger.py JSON files scored on the same references")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                        help="two samplers (as the table names them): A's gen-PPL over B's at matched entropy")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "frontier.png"), help="the plot (PNG)")
    args = parser.parse_args()
    for path in args.ledgers:
        if not Path(path).is_file():
            raise SystemExit(f"{path} not found: run benchmarks/quality_ledger.py first")
    lines, references = read_lines(args.ledgers)
    if args.compare and (missing := [s for s in args.compare if s not in lines]):
        raise SystemExit(f"no sampler named {missing[0]!r}; the ledgers hold: {', '.join(lines)}")
    print(f"references: gen-PPL {references['gen_ppl']:.1f} at {references['unigram_entropy']:.2f} bits")
    print("| sampler | T | unigram H (bits) | gen-PPL |\n|---|---|---|---|")
    for sampler, points in lines.items():
        for h, p, t in points:
            print(f"| {sampler} | {t:g} | {h:.2f} | {p:.1f} |")
    if args.compare:
        a, b = args.compare
        if bumpy := [s for s in args.compare if not monotone(lines[s])]:
            print(f"\n{bumpy[0]}: entropy does not rise with temperature along it; no matched-entropy reading")
        else:
            readings = ", ".join(f"{r:.2f}× at {h:.2f} bits" for h, r in matched_ratios(lines[a], lines[b]))
            print(f"\n{a} ÷ {b} at matched entropy: {readings or 'their entropy ranges do not overlap'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(lines, references, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
