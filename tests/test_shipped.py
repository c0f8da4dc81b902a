"""The pipelines shipped in checkpoints/ load, and `ldlm generate` and `ldlm longgen` use them by default (the README's
main jobs)."""
import pytest
import torch

from ldlm.cli import main
from ldlm.pipelines.loading import SHIPPED, SHIPPED_LONG, load_pipeline

pytestmark = pytest.mark.skipif(not (SHIPPED / "model_index.json").is_file(), reason="no source checkout")


def test_shipped_pipeline_generates_deterministically():
    pipe = load_pipeline()
    assert pipe.transformer.dtype == torch.float32 and pipe.scheduler.config.timestep_spacing == "trailing"
    shape = lambda model: {k: v for k, v in model.config.items() if not k.startswith("_")}  # noqa: E731
    assert (pipe.config.autoguidance, pipe.config.temperature, pipe.config.new_blocks) == (3.0, 1.07, 4)
    assert shape(pipe.weak_transformer) == shape(pipe.transformer)
    run = lambda: pipe(["The Eagle is a coffee shop"], num_samples_per_prompt=2, num_inference_steps=5,  # noqa: E731
                       generator=torch.Generator().manual_seed(0)).texts
    texts = run()
    assert texts == run() and all(t.startswith("The Eagle is a coffee shop") for t in texts)
    assert all(len(t.split()) > 6 for t in texts)


def test_generate_defaults_to_the_shipped_pipeline(capsys):
    assert main(["generate", "--num-samples", "2", "--steps", "4", "--scheduler", "ddim"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(lines)


def test_shipped_guidance_models_read_the_shipped_latents():
    from ldlm.pipelines.loading import load_classifier
    from ldlm.pipelines.loading import SHIPPED_CONTENT
    from ldlm.data.postags import LexiconTagger

    pipe = load_pipeline()
    content = load_classifier(SHIPPED_CONTENT)
    text = "Loch Fyne serves English food in the riverside area."
    latents = pipe.vae.encode_text([text], pipe.tokenizer)[0][None]
    probs = dict(zip(content.config.labels, content(latents).sigmoid()[0].tolist()))
    assert probs["food[English]"] > 0.5 and probs["area[riverside]"] > 0.5 and probs["food[Chinese]"] < 0.5
    tags = load_classifier(SHIPPED_CONTENT.parent / "pos")(latents).argmax(-1)[0]
    assert tags.shape == (16,) and content.config.latents_per_block == 4
    lexicon = LexiconTagger.load(SHIPPED_CONTENT.parent / "pos-lexicon.json")
    assert lexicon.tag(["the", "food", "is", "cheap"]) == ["DET", "NOUN", "VERB", "ADJ"]


def test_snapping_a_clean_encoding_leaves_it_where_it_is():
    pipe = load_pipeline(SHIPPED)
    z = pipe.vae.encode_text(["The Eagle is a coffee shop near the river."], pipe.tokenizer)[0][None]
    torch.testing.assert_close(pipe.vae.snap_sequence(z), z, atol=1e-4, rtol=0)


def test_eval_vae_reads_the_shipped_pipeline(capsys):
    assert main(["eval-vae", "--vae", str(SHIPPED), "--corpus", "builtin:restaurants:20", "--noise", "0"]) == 0
    accuracy = float(capsys.readouterr().out.split("acc_all=")[1].split()[0])
    assert accuracy > 0.9


def test_shipped_training_configs_load_with_todays_schema():
    from ldlm.training.config import DiTExperiment, VAEExperiment, load_config

    vae = load_config(VAEExperiment, str(SHIPPED / "vae" / "train-config.yaml"), [])
    dit = load_config(DiTExperiment, str(SHIPPED / "transformer" / "train-config.yaml"), [])
    weak = load_config(DiTExperiment, str(SHIPPED / "weak_transformer" / "train-config.yaml"), [])
    assert vae.model.freeze_encoder and dit.diffusion.min_snr_gamma == 5.0 and weak.model.preset == "small"
    for part, schema in (("vae", VAEExperiment), ("transformer", DiTExperiment), ("weak_transformer", DiTExperiment)):
        assert load_config(schema, str(SHIPPED_LONG / part / "train-config.yaml"), []).data.train[0].holdout_every == 10


def test_every_config_loads_with_its_schema_into_its_own_runs_folder():
    from ldlm.training.config import (ARExperiment, ClassifierExperiment, DiTExperiment, VAEExperiment,
                                      load_config)

    vae, dit, ar, classifier = VAEExperiment, DiTExperiment, ARExperiment, ClassifierExperiment
    schema = {"tiny": vae, "e2e-smollm2": vae, "e2e-vae-robust": vae, "e2e-vae-context": vae, "kjv-vae-robust": vae,
              "e2e-dit": dit, "e2e-dit-robust": dit, "e2e-dit-distill": dit, "e2e-dit-guided": dit, "e2e-dit-weak": dit,
              "kjv-long": dit, "kjv-long-weak": dit, "kjv-long-distill": dit, "e2e-ar": ar, "kjv-ar": ar,
              "e2e-content": classifier, "brown-pos": classifier}
    configs = {p.stem: p for p in (SHIPPED.parents[1] / "configs").glob("*.yaml")}
    assert set(configs) == set(schema)
    outputs = [load_config(schema[name], str(path), []).train.output_dir for name, path in configs.items()]
    assert all(out.startswith("runs/") for out in outputs) and len(set(outputs)) == len(outputs)


@pytest.mark.skipif(not (SHIPPED_LONG / "model_index.json").is_file(), reason="no source checkout")
def test_longgen_defaults_to_the_shipped_long_document_pipeline(tmp_path, capsys):
    out = tmp_path / "doc.txt"
    assert main(["longgen", "--output", str(out), "--max-tokens", "300", "--ignore-eos", "--steps", "3",
                 "--prompt", "And it came to pass"]) == 0
    assert "(stopped: length)" in capsys.readouterr().out
    assert out.read_text().startswith("And it came to pass") and len(out.read_text().split()) > 100
    pipe = load_pipeline(SHIPPED_LONG)
    assert pipe.transformer.config.max_blocks == 8 and pipe.config.autoguidance >= 1
    assert pipe.config.new_blocks == 4  # chosen by measurement (docs/RESULTS.md, the new_blocks sweep)
