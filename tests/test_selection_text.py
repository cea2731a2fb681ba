"""`vitplas select` and train=[auto:<criterion>] on text models, offline: the tiny random BERT and
GPT-2 folders (text_fixtures) on Rotten Tomatoes texts in the real format, and the real
MiniLM-L6 on the real Rotten Tomatoes (skipped when absent). Plasticity pairs the reference's
val texts with the target's train texts through the estimator's masked ratio."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_families_text import minilm_folder
from text_fixtures import text_world
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.config import ConfigError, config_from_dict
from vitplas.selection.config import SelectConfig
from vitplas.selection.select import score_config

SMALL = dict(target="rotten-tomatoes", max_length=12, batch_size=4, grad_batches=1, device="cpu",
             reference="rotten-tomatoes", pairs=4)  # fmt: skip
SCORED = {"plasticity", "grad_rms", "rgn", "fisher", "fps", "condition", "stable_rank", "params",
          "random"}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return text_world(tmp_path_factory.mktemp("text"))


def _scores(world, family: str, **more) -> pd.DataFrame:
    data = {**SMALL, "model": str(world[family]), "data_root": str(world["data"]), **more}
    return score_config(config_from_dict(SelectConfig, data))


def _types(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["layer"].astype(str) == "all"].pivot(
        index="component", columns="criterion", values="score"
    )


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_every_default_criterion_scores_a_text_model(world, family):
    frame = _scores(world, family)
    assert set(frame["criterion"]) == SCORED
    types = _types(frame)
    assert set(types.index) == {"ln1", "mha", "ln2", "fc1", "fc2"}
    for criterion in ("plasticity", "grad_rms", "rgn", "fisher", "fps", "params"):  # GPT-2's Conv1D
        assert types[criterion].notna().all() and (types[criterion] > 0).all(), criterion


def test_fps_and_gradients_read_no_pad_position(world):
    """More padding (max_length 12 -> 24) changes no score: pads are masked in the model and
    left out of FPS's input magnitudes."""
    criteria = ["fps", "fisher", "grad_rms"]
    short, long = (
        _types(_scores(world, "bert", criteria=criteria, max_length=n)) for n in (12, 24)
    )
    pd.testing.assert_frame_equal(short, long, rtol=1e-5)


def test_the_plasticity_criterion_is_the_estimators_masked_ratio_on_text(world):
    """select's plasticity on a text model = the plasticity estimator on the same text pairs
    (reference val x target train, tokenised alike), and it refuses an image reference."""
    from vitplas.analysis.pairs import pair_batches
    from vitplas.data import TokenizedTexts, get_dataset
    from vitplas.models.build import load_model
    from vitplas.models.components import component_map
    from vitplas.models.hf_text import load_tokenizer
    from vitplas.selection import criteria as C

    frame = _scores(world, "bert", criteria=["plasticity", "plasticity_hidden"])
    loaded = load_model(str(world["bert"]))
    tokenizer = load_tokenizer(loaded.tokenizer, loaded.model)
    root = str(world["data"])
    ref, tgt = (TokenizedTexts(get_dataset("rotten-tomatoes", split, root=root), tokenizer, 12)
                for split in ("val", "train"))  # fmt: skip
    pairs = list(pair_batches(ref, tgt, pairs=4, batch_size=4, seed=0))
    cmap = component_map(loaded.model.eval())
    for name, inputs in (("plasticity", "embedding"), ("plasticity_hidden", "hidden")):
        direct = pd.DataFrame(C.plasticity_scores(cmap, pairs, inputs=inputs))
        got = frame[frame["criterion"] == name].set_index(["layer", "component"])["score"]
        want = direct.set_index(["layer", "component"])["score"]
        pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False,
                                       rtol=1e-5)  # fmt: skip
    with pytest.raises(ConfigError, match="reference 'photos' is image but the model reads text"):
        _scores(world, "bert", criteria=["plasticity"], reference="photos")


def test_select_command_on_a_text_model(world, tmp_path):
    args = ["select", "--model", str(world["bert"]), "--target", "rotten-tomatoes",
            "--data-root", str(world["data"]), "max_length=12", "grad_batches=1",
            "batch_size=4", "reference=rotten-tomatoes", "pairs=4", "--device", "cpu",
            "--out", str(tmp_path / "sel")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "sel" / "selection.csv")
    assert set(frame["criterion"]) == SCORED
    picks = json.loads((tmp_path / "sel" / "picks.json").read_text())["picks"]
    assert set(picks) == SCORED


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_auto_fisher_picks_and_trains_a_text_model(world, family, tmp_path):
    from vitplas.jobs.runners import run_finetune
    from vitplas.training.config import load_finetune_config

    cfg = load_finetune_config(None, [
        f"model={world[family]}", f"data_root={world['data']}", "dataset=rotten-tomatoes",
        "train=[auto:fisher:0.5]", "max_length=12", "steps=2", "eval_every=2",
        "warmup_steps=0", "batch_size=6", "num_workers=0", "device=cpu", "tensorboard=false",
        "select.extra={grad_batches: 1, batch_size: 4}",
    ])  # fmt: skip
    result = run_finetune(cfg, tmp_path)
    frame = pd.read_csv(tmp_path / "selection.csv")
    assert set(frame["criterion"]) == {"fisher"}
    picked = json.loads((tmp_path / "picks.json").read_text())["picks"]["fisher"]
    assert result["train"] == picked and picked


def test_select_on_the_real_minilm_and_rotten_tomatoes():
    from vitplas.data import is_available

    minilm_folder()
    if not is_available("rotten-tomatoes")[0]:
        pytest.skip("rotten-tomatoes is absent; run `bash scripts/offline-assets`")
    data = {**SMALL, "model": "minilm-l6", "max_length": 32, "data_root": None}
    types = _types(score_config(config_from_dict(SelectConfig, data)))
    assert set(types.columns) == SCORED and len(types) == 5
    assert types[["grad_rms", "rgn", "fisher", "fps"]].notna().all().all()


def test_select_refuses_what_a_text_model_cannot_read_in_one_line(world):
    from vitplas.models.errors import ModelError

    with pytest.raises(ConfigError, match=r"target 'digits' is image but .* reads text") as e:
        _scores(world, "bert", target="digits", criteria=["grad_rms"])
    assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match=r"max_length 1000: .* reads sequences of 1 to \d+"):
        _scores(world, "gpt2", criteria=["grad_rms"], max_length=1000)
