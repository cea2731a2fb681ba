"""The cost of a text study before it runs: FLOPs of text classifiers counted on token batches
(B, 2, L) of max_length against a hand count, a text plasticity job, the dry run's table."""

from __future__ import annotations

import json

import pytest
import transformers as tf
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.experiments import cost, flops
from vitplas.experiments.spec import load_spec

# tiny GPT-2 / BERT: width D = 32, 2 blocks, 4 heads, MLP 48; texts of L = 16 tokens, 3 classes
D, MLP, DEPTH, L, CLASSES = 32, 48, 2, 16, 3
_SIZE = dict(num_hidden_layers=DEPTH, hidden_size=D, num_attention_heads=4, intermediate_size=MLP)

# multiply-adds per text, matrix products only (every text is padded to L: all L positions)
QKV = L * D * 3 * D
SCORES = L * L * D  # q k^T over all heads (4 heads x L x L x 8): the causal mask saves none
VALUES = L * L * D  # softmax(.) v
PROJ = L * D * D
FC1 = L * D * MLP
FC2 = L * MLP * D
BLOCK = QKV + SCORES + VALUES + PROJ + FC1 + FC2
FORWARD = {
    "gpt2": DEPTH * BLOCK + L * D * CLASSES,  # `score` on every position, the last real kept
    "bert": DEPTH * BLOCK + D * D + D * CLASSES,  # pooler on the first token, then classifier
}


def _folder(tmp_path, kind: str) -> str:
    """A config-only Hugging Face folder (no weights: the cost reads the config alone)."""
    if kind == "gpt2":
        config = tf.GPT2Config(
            n_layer=DEPTH, n_embd=D, n_head=4, n_inner=MLP, vocab_size=20, n_positions=40,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
    else:
        config = tf.BertConfig(**_SIZE, vocab_size=20, max_position_embeddings=40)
    folder = tmp_path / kind
    config.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_forward_flops_of_tiny_text_classifiers_match_the_hand_count(tmp_path, kind):
    model = flops.meta_model(_folder(tmp_path, kind), None, CLASSES)
    assert next(model.parameters()).device.type == "meta"
    assert flops.forward_flops(model, L) == 2 * FORWARD[kind]  # 2 FLOPs per multiply-add
    with pytest.raises(ValueError, match="sequence length"):
        flops.forward_flops(model)


def _spec(tmp_path, model: str, analysis: str = "") -> cost.SweepSpec:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: t\nselect_by: best_val_acc\n"
        f"base: {{model: {model}, dataset: rotten-tomatoes, max_length: {L}, batch_size: 4, "
        "steps: 10, warmup_steps: 0, eval_every: 4, max_eval_samples: 50, tensorboard: false}\n"
        "grid: {train: [all, ln1]}\n" + analysis
    )
    return load_spec(path)


def test_a_text_finetune_run_counts_token_batches_of_max_length(tmp_path):
    folder = _folder(tmp_path, "gpt2")
    study = cost.study_cost(_spec(tmp_path, folder), cost.declared_device(1.0, 1.0, 0.0))
    full, ln1 = study.runs
    # train=[all]: every product gives a gradient for its input and its weight (2x its
    # forward; block 0's input too, the embeddings being trained): 3x the forward, batch of 4
    assert full.flops["train"] == 10 * 4 * 3 * 2 * FORWARD["gpt2"]
    assert full.flops["val"] == 2 * FORWARD["gpt2"] * 50 * 2  # 2 validations (steps 4 and 8)
    assert full.flops["test"] == 2 * FORWARD["gpt2"] * 50
    assert 0 < ln1.flops["train"] < full.flops["train"]  # no weight gradients but LN's
    model = flops.meta_model(folder, None, CLASSES)
    assert full.disk_bytes > 4 * sum(p.numel() for p in model.parameters())  # best + records
    assert full.shape == f"{folder}@{L} tokens b4 all"
    assert not full.notes  # rotten-tomatoes' split sizes are known
    assert cost.split_sizes("rotten-tomatoes") == (
        {"train": 8_854, "val": 2_213, "test": 2_768},
        True,
    )


def _plasticity(folder: str, inputs: str, bounds: bool = True) -> str:
    return (
        "analysis:\n  plasticity:\n"
        f"    - {{model: {folder}, reference: wordnet-glosses, target: rotten-tomatoes, "
        f"max_length: {L}, pairs: 100, radius_images: 8, inputs: {inputs}, "
        f"bounds: {str(bounds).lower()}}}\n"
    )


@pytest.mark.parametrize(("inputs", "radius_blocks"), [("embedding", 0), ("hidden", DEPTH - 1)])
def test_a_text_plasticity_job_counts_its_pairs_and_radius_texts(tmp_path, inputs, radius_blocks):
    folder = _folder(tmp_path, "bert")
    spec = _spec(tmp_path, folder, _plasticity(folder, inputs))
    (job,) = [j for j in cost.study_cost(spec).jobs if j.kind == "plasticity"]
    model = flops.meta_model(folder, None, 0)
    pair = flops.pair_flops(model, inputs, L)
    # the token radius: embedding output (a lookup, no product), or each block's input (the
    # first DEPTH - 1 blocks run on each radius text)
    assert flops.text_radius_flops(model, inputs, L) == 2 * radius_blocks * BLOCK
    assert job.flops["analysis"] == 100 * pair + 8 * 2 * radius_blocks * BLOCK
    assert pair > 0 and job.shape == f"{folder}@{L} tokens"
    spec = _spec(tmp_path, folder, _plasticity(folder, inputs, bounds=False))
    (job,) = [j for j in cost.study_cost(spec).jobs if j.kind == "plasticity"]
    assert job.flops["analysis"] == 100 * pair


def test_probes_of_a_text_model_count_one_forward_per_text_they_read(tmp_path):
    folder = _folder(tmp_path, "bert")
    probes = "analysis:\n  probes:\n"
    probes += f"    - {{model: {folder}, dataset: rotten-tomatoes, max_length: {L}, "
    probes += "max_train: 50, max_test: 20}\n"
    (job,) = [
        j for j in cost.study_cost(_spec(tmp_path, folder, probes)).jobs if j.kind == "probes"
    ]
    # the base model (no new head: the features end at a block): blocks and BERT's pooler
    assert job.flops["analysis"] == 2 * (DEPTH * BLOCK + D * D) * (50 + 20)
    assert job.shape == f"{folder}@{L} tokens"


def test_dry_run_of_a_text_study_says_tokens_and_writes_json(tmp_path):
    folder = _folder(tmp_path, "gpt2")
    _spec(tmp_path, folder, _plasticity(folder, "hidden"))
    out = tmp_path / "cost.json"
    args = ["sweep", str(tmp_path / "s.yaml"), "--dry-run", "--json", str(out)]
    result = CliRunner().invoke(app, [*args, "--root", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert f"{folder}@{L} tokens b4 all" in result.output and " px" not in result.output
    estimate = json.loads(out.read_text())
    assert [j["kind"] for j in estimate["jobs"]] == ["finetune", "finetune", "plasticity"]
    assert estimate["totals"]["flops"] == sum(j["total_flops"] for j in estimate["jobs"])


@pytest.mark.slow
def test_dry_run_of_the_paper_text_study_prints_its_table_and_json(tmp_path):
    out = tmp_path / "cost.json"
    args = ["reproduce", "configs/paper/text.yaml", "--dry-run", "--json", str(out)]
    result = CliRunner().invoke(app, [*args, "--root", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "gpt2@128 tokens b64 all" in result.output and "108 runs: train " in result.output
    assert "plasticity  gpt2@128 tokens" in result.output and "PFLOP" in result.output
    estimate = json.loads(out.read_text())
    assert len(estimate["jobs"]) == 110 and estimate["totals"]["analysis_flops"] > 0
