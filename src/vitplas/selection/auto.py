"""train=[auto]: a criterion picks the train set before finetuning starts.

    resolve_auto(cfg, run_dir) -> cfg with a concrete `train` and select.resolved = True:
        the finetuning job's `prepare` (vitplas.jobs.table), called inside its lifecycle while
        it owns the run folder, before the config check (a sweep's runner may still be named
        `vitplas.selection.auto:finetune`: it means vitplas.jobs.runners.run_finetune)

`auto` uses select.criterion and select.budget; `auto:fisher` names the criterion and
`auto:fisher:0.2` the budget too, in the train list itself, so a sweep grids over criteria and
budgets with its `train` axis. The choice is scored on the run's model and
dataset (its train split, for every criterion) by
vitplas.selection.select with select.extra's SelectConfig keys, and written to the run folder
(selection.csv, picks.json). The resolved config (config.yaml) holds the picked set and the
select block; a rerun of the same run folder reuses the stored pick instead of scoring again,
unless an earlier version of the criteria scored it (picks.json's criteria_version). A
criterion whose first-ranked unit does not fit the budget picks nothing: a ConfigError.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vitplas.config import ConfigError, config_from_dict
from vitplas.records import read_json, read_yaml
from vitplas.selection.budget import decide, nothing_picked
from vitplas.selection.config import SelectConfig
from vitplas.selection.criteria import CRITERIA_VERSION, parse_criteria
from vitplas.selection.select import picks, score_config, write_selection
from vitplas.training.trainsets import AUTO, is_auto


def _criterion(cfg) -> tuple[str, float]:
    """(criterion, budget) of the auto token: `auto[:criterion[:budget]]`."""
    token = next(t for t in cfg.train if is_auto(t))
    parts = token.split(":")
    name = parts[1] if len(parts) > 1 else cfg.select.criterion
    try:
        budget = float(parts[2]) if len(parts) > 2 else cfg.select.budget
        if len(parts) > 3 or not 0 < budget <= 1:
            raise ValueError(f"write auto:<criterion>:<budget in (0, 1]>, got '{token}'")
        return parse_criteria([name])[0], budget
    except ValueError as err:
        raise ConfigError(f"train=[{token}]: {err}") from err


def _extra_criteria(cfg) -> list[str]:
    """select.extra's criteria (a list or a comma string; none when the key is absent)."""
    named = cfg.select.extra.get("criteria")
    try:
        return parse_criteria(named) if named else []
    except ValueError as err:
        raise ConfigError(f"select.extra.criteria: {err}") from err


def select_config(cfg, criterion: str) -> SelectConfig:
    """The SelectConfig that scores `criterion` for finetune config `cfg` (its select block)."""
    from vitplas.data import dataset_info

    text = dataset_info(cfg.dataset).modality == "text"
    data: dict[str, Any] = {
        "model": cfg.model,
        "random_init": cfg.random_init,
        "allow_unfinished": cfg.allow_unfinished,
        "img_size": None if text else cfg.img_size,  # a text model has none
        **({"max_length": cfg.max_length} if text else {}),
        "protocol": cfg.protocol,  # scored on the inputs the run trains on
        "target": cfg.dataset,
        "data_root": cfg.data_root,
        "budget": cfg.select.budget,
        "granularity": cfg.select.granularity,
        "device": cfg.device,
        **cfg.select.extra,
        # the run's criterion first; select.extra's criteria are scored too (selection.csv),
        # so that a study's evidence has every criterion's ranking from one scoring
        "criteria": list(dict.fromkeys([criterion, *_extra_criteria(cfg)])),
    }
    return config_from_dict(SelectConfig, data, where="select.extra")


def _stored(run_dir: Path, cfg) -> list[str] | None:
    """The train set a previous resolution of this run folder stored, if its select matches."""
    if not (run_dir / "config.yaml").is_file():
        return None
    stored = read_yaml(run_dir, unfinished=True)  # the folder's state, finished or not
    if not isinstance(stored, dict):
        return None  # not a config: the config check names it
    want = dataclasses.asdict(cfg.select)
    got = stored.get("select", {})
    same = all(got.get(k) == v for k, v in want.items() if k != "resolved")
    return list(stored["train"]) if same and got.get("resolved") and _current(run_dir) else None


def _current(run_dir: Path) -> bool:
    """Whether the run folder's picks.json was scored by this version of the criteria."""
    if not (run_dir / "picks.json").is_file():
        return False
    record = read_json(run_dir, "picks.json", unfinished=True)  # verified once the run is done
    return isinstance(record, dict) and record.get("criteria_version") == CRITERIA_VERSION


def resolve_auto(cfg, run_dir: str | Path):
    """`cfg` itself when its train set is concrete; else a copy with the criterion's pick."""
    if not any(is_auto(t) for t in cfg.train):
        return cfg
    criterion, budget = _criterion(cfg)
    select = dataclasses.replace(cfg.select, criterion=criterion, budget=budget, resolved=True)
    resolved = dataclasses.replace(cfg, select=select)
    train = _stored(Path(run_dir), resolved)
    if train is None and (Path(run_dir) / "DONE").exists():
        raise ConfigError(
            f"{run_dir} holds a finished run of another selection (other select settings, or "
            f"criteria scored before version {CRITERIA_VERSION}); use another run folder "
            "(--out) for these settings, or delete it to replace that run"
        )
    if train is None:
        scfg = select_config(dataclasses.replace(cfg, select=select), criterion)
        frame = score_config(scfg)
        chosen = picks(frame, scfg.budget, scfg.granularity, scfg.rule)
        if not chosen[criterion]:
            decided = decide(frame, criterion, scfg.budget, scfg.granularity, scfg.rule)
            raise ConfigError(
                f"train=[auto:{criterion}] picks nothing at budget {scfg.budget:g}: "
                f"{nothing_picked(decided, scfg.budget)}"
            )
        write_selection(run_dir, frame, chosen, scfg.budget, scfg.granularity, scfg.rule)
        train = chosen[criterion]
    resolved.train = train
    resolved.validate()
    return resolved


__all__ = ["AUTO", "resolve_auto", "select_config"]
