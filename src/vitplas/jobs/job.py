"""The record of one job kind, and what a job's compute function gives back.

A `Job` is data: import paths ("package.module:name") rather than objects, so that reading the
table (the command line's --help, a sweep spec's check) imports no torch. Its functions:

    compute(cfg, run: RunDir, **hooks) -> Computed   the work; writes the job's own records
                                                     (tables, figures, weights) into `run`
    read_back(run: RunDir) -> dict                   a finished run's result, every record read
                                                     verified (vitplas.runs.RunDir.read_verified)
    prepare(cfg, run_dir) -> cfg                     optional: settle the config inside the lock
                                                     before its check (train=[auto]'s pick)
    extend(cfg, run, result) -> (more, records)      optional: after the compute or the
                                                     read-back, inside the lock, the records a
                                                     runtime key asks for (select's export);
                                                     they join the seal
    render(result, cfg) -> None                      the command line's printout of a result

vitplas.jobs.lifecycle.run_job gives every job the rest: the lock, the config check, read-back
or compute, manifest, result.json, the seal, --repair and --wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from vitplas.runs import ANALYSIS_RUNTIME_KEYS, Computed

__all__ = ["ANALYSIS_RUNTIME_KEYS", "Computed", "Job"]


@dataclass(frozen=True)
class Job:
    """One job kind: its config, its functions, what it writes and how it is offered."""

    kind: str  # the job's name: its command, its `config show` kind, its lock's holder
    config: str  # "module:Class" of its config dataclass (a module that imports no torch)
    compute: str  # "module:function"(cfg, run, **hooks) -> Computed
    read_back: str  # "module:function"(run) -> result of a finished run
    summary: str  # one line of at most 60 characters: what it computes (its command's help)
    records: tuple[str, ...] = ()  # files of its run folder that the seal covers (globs)
    tables: Mapping[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)  # tidy
    # tables a study aggregates: name -> (the columns that name one number, that number's column)
    runtime_keys: frozenset[str] = ANALYSIS_RUNTIME_KEYS  # keys a rerun may change
    input_runs: tuple[str, ...] = ("model",)  # config keys whose value may name another run
    # folder (a model that is a finetuning run): the lifecycle checks that run's content
    # (vitplas.jobs.inputs), not only its name, before a read-back or a resume
    result_file: bool = True  # the lifecycle writes result.json (finetune writes its own)
    manifest: bool = True  # the lifecycle writes manifest.json (finetune's own at its start)
    prepare: str | None = None  # "module:function"(cfg, run_dir) -> cfg, inside the lock
    after_done: str | None = None  # "module:function"(cfg, run) once DONE (prune train state)
    extend: str | None = None  # "module:function"(cfg, run, result) -> (result additions,
    # records written), inside the lock after the compute or the read-back: what a runtime key
    # asks of a finished run too (select's export formats); the lifecycle seals those records
    on_finished_run: tuple[str, str] | None = None  # (kind, what its work is called) of the
    # job in whose finished run it works (evaluate: ("finetune", "finetuning")): no folder of
    # its own; its tables extend that run's seal, and a damaged record is that job's to repair
    render: str | None = None  # "module:function"(result, cfg): the CLI's printout
    flag_of: str | None = None  # the job kind whose command runs it by a flag (compare-base:
    # `plasticity --compare-base`, with plasticity's config): no command or config kind of its own
    examples: tuple[str, ...] = ()  # offline command lines for its --help (tests run them)
    flags: Mapping[str, str] = field(default_factory=dict)  # config key -> its --flag
    presets: str | None = None  # "module:NAME" of {preset: keys it sets} (--preset NAME)
    positional: str | None = None  # a config key given as the command's first argument
    positional_name: tuple[str, str] = ("", "")  # that argument's (metavar, what it names) in
    # help and messages, e.g. ("RUN_DIR", "run folder"); empty: the key in capitals, the key
    folder: Literal["stamp", "hash", "none"] = "stamp"  # default run folder: runs/<kind>/
    # <time>-<model> (stamp), runs/<kind>/<name>-<config hash> (hash: the same command finds
    # the same folder), or none (the job works in `positional`'s folder)
    folder_name: tuple[str, ...] = ("model",)  # config keys that name a stamped folder
    progress: Literal["pairs", "phases", "images", "none", "bar"] = "phases"  # its progress
    analysis: str | None = None  # its key in a sweep spec's `analysis:` section
    dataset_key: str | None = None  # for_each_dataset: the config key a grid dataset fills
    sweep_runner: bool = False  # a sweep's runner.function may name it
    runner: str = ""  # "module:function"(cfg, run_dir, **kw): the public runner (vitplas.jobs)
    aliases: tuple[str, ...] = ()  # older import paths of `runner` that specs may still name
    cost: Literal["pairs", "images", "radius", "finetune", "none"] = "none"  # what the
    # study's cost estimate (experiments.cost) counts for one such job

    def argument(self) -> tuple[str, str]:
        """(metavar, what it names) of the command's first argument (`positional`)."""
        metavar, noun = self.positional_name
        key = self.positional or ""
        return metavar or key.upper(), noun or key
