"""A study's cost before it runs: FLOP counts against a hand count, split sizes, the dry run."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.experiments import cost, flops
from vitplas.experiments.spec import expand, load_spec
from vitplas.jobs import registry as jobs
from vitplas.training.config import FinetuneConfig

# tiny-random: 32 px images, 8 px patches, width D = 48, 2 blocks, 3 heads, MLP 144 (ratio 3)
P, D, H, DEPTH, CLASSES = 16, 48, 144, 2, 10
N = P + 1  # tokens: 16 patches + the class token
PATCH_IN = 3 * 8 * 8  # one patch, flattened: the patch embedding's input width

# multiply-adds per image, matrix products only
EMBED = P * PATCH_IN * D  # the patch embedding convolution
QKV = N * D * 3 * D
SCORES = N * N * D  # q k^T over all heads (3 heads x N x N x 16)
VALUES = N * N * D  # softmax(.) v
PROJ = N * D * D
FC1 = N * D * H
FC2 = N * H * D
BLOCK = QKV + SCORES + VALUES + PROJ + FC1 + FC2
HEAD = D * CLASSES  # the class token through the head
FORWARD = EMBED + DEPTH * BLOCK + HEAD


def _tiny(train: list[str], batch: int = 4) -> FinetuneConfig:
    return FinetuneConfig(model="tiny-random", img_size=32, batch_size=batch, train=train)


def test_forward_flops_of_a_tiny_vit_match_the_hand_count():
    model = flops.meta_model("tiny-random", 32, CLASSES)
    assert flops.forward_flops(model) == 2 * FORWARD  # 2 FLOPs per multiply-add


def test_train_step_flops_of_full_finetuning_match_the_hand_count():
    # backward: every product of the blocks and the head gives a gradient for its input and
    # one for its weight (attention's two products: one for each operand), 2x its forward;
    # the patch embedding only for its weight (the images need no gradient)
    backward = 2 * (DEPTH * BLOCK + HEAD) + EMBED
    # the optimizer's update is element-wise: no matrix product, nothing counted
    model = flops.meta_model("tiny-random", 32, CLASSES)
    counted, trained = flops.train_step_flops(model, _tiny(["all"]))
    assert counted == 4 * 2 * (FORWARD + backward)  # batch of 4
    assert trained == sum(p.numel() for p in model.parameters())


def test_train_step_flops_with_frozen_weights_skip_their_gradients():
    # train ln1 (+ head, final norm): the gradient flows from the head down to block 0's
    # first norm, so every product gives its input's gradient (attention's two products, with
    # no weight, one for each operand: 2x their forward), but only the head's weight gets one;
    # the patch embedding, below every trained parameter, does no backward work at all
    backward = DEPTH * (BLOCK + SCORES + VALUES) + HEAD + HEAD
    model = flops.meta_model("tiny-random", 32, CLASSES)
    counted, trained = flops.train_step_flops(model, _tiny(["ln1"], batch=2))
    assert counted == 2 * 2 * (FORWARD + backward)
    assert trained == DEPTH * 2 * D + 2 * D + HEAD + CLASSES  # ln1 of 2 blocks, norm, head


@pytest.mark.parametrize(
    ("dataset", "sizes"),
    [
        ("cifar10", {"train": 40_000, "val": 10_000, "test": 10_000}),
        ("cifar10-c/contrast/5", {"train": 6_400, "val": 1_600, "test": 2_000}),
        ("flowers102", {"train": 1_020, "val": 1_020, "test": 6_149}),
        ("mnist-5k", {"train": 3_200, "val": 800, "test": 1_000}),
    ],
)
def test_split_sizes_follow_the_split_rules(dataset, sizes):
    assert cost.split_sizes(dataset) == (sizes, True)


def test_device_time_and_bad_options_say_what_to_give():
    device = cost.declared_device(100.0, 0.5, 10.0)
    assert device.seconds(100e12 * 0.5 * 30, "fp32", jobs=2) == pytest.approx(30 + 20)
    assert device.peak("fp32") == device.peak("bf16") == 100.0  # one number: every precision
    with pytest.raises(ValueError, match=r"neither a device \(h100, h200, a100, l40s, h100-pcie"):
        cost.declared_device("fast")
    with pytest.raises(ValueError, match="0 < mfu <= 1"):
        cost.Device(mfu=1.5)
    assert cost.declared_device() == cost.DEVICES["h100"]


@pytest.mark.parametrize(
    ("name", "peaks"),
    [
        ("h100", (66.9, 494.7, 989.4)),
        ("H200", (66.9, 494.7, 989.4)),
        ("a100", (19.5, 156.0, 312.0)),
        ("l40s", (91.6, 181.05, 362.1)),
    ],
)
def test_the_device_table_holds_dense_peaks_per_precision(name, peaks):
    from vitplas.experiments.devices import device_named

    device = cost.declared_device(name, mfu=0.5)
    assert (device.peak("fp32"), device.peak("tf32"), device.peak("bf16")) == peaks
    assert device.peak("fp16") == peaks[2] and device.kind == "cuda" and device.mfu == 0.5
    flops_ = 1e15
    assert device.seconds(flops_, "fp32", jobs=0) == pytest.approx(flops_ / (peaks[0] * 0.5e12))
    assert device_named(device.cuda + " 80GB HBM3").peak("bf16") == peaks[2]  # by CUDA name
    assert device_named("NVIDIA H100 PCIe").bf16 == 756.0 and device_named("Tesla K80") is None


def test_run_cost_counts_validations_disk_and_a_slurm_limit(tmp_path):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "name: t\nselect_by: best_val_acc\n"
        "base: {model: tiny-random, img_size: 32, batch_size: 4, steps: 10, "
        "warmup_steps: 0, eval_every: 4, max_eval_samples: 50, dataset: mnist-5k, "
        "tensorboard: false}\ngrid: {train: [all, ln1]}\n"
    )
    spec = load_spec(spec_file)
    study = cost.study_cost(spec, cost.declared_device(1.0, 1.0, 0.0))
    full = study.runs[0]
    assert full.flops["val"] == 2 * FORWARD * 50 * 2  # 2 validations (steps 4 and 8)
    assert full.flops["test"] == 2 * FORWARD * 50
    model = flops.meta_model("tiny-random", 32, CLASSES)
    assert full.disk_bytes > 4 * sum(p.numel() for p in model.parameters())  # best + records
    assert full.seconds == pytest.approx(full.total_flops / 1e12)
    assert study.totals()["jobs"] == 2
    limits = cost.slurm_time_limits(spec, expand(spec))
    assert set(limits.values()) == {30}  # seconds of work: the slack, rounded up to 30 min


@pytest.mark.slow
def test_dry_run_of_the_paper_main_study_prints_its_count_and_totals(tmp_path):
    spec_path = "configs/paper/main.yaml"
    out = tmp_path / "cost.json"
    args = ["sweep", spec_path, "--dry-run", "--runs", "--json", str(out), "--root", str(tmp_path)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    n_runs = len(expand(load_spec(spec_path), with_presets=False))
    assert f"{n_runs} runs: train " in result.output
    assert "total" in result.output and "EFLOP" in result.output
    # the paper trains in float32: timed at the fp32 peak, with the bf16 alternative beside
    assert f"precision: {n_runs} of {n_runs} runs train without bf16 ({n_runs} in fp32" in (
        result.output
    )
    assert "with amp: bf16 " in result.output and "14.1x faster" in result.output
    first = result.output.splitlines()[0]  # each run: id, state, its FLOPs and time
    assert "[missing]" in first and "PFLOP" in first and first.endswith(" h")  # fp32: hours
    estimate = json.loads(out.read_text())
    runs = [j for j in estimate["jobs"] if j["kind"] == "finetune"]
    assert len(runs) == n_runs
    totals = estimate["totals"]
    for key in ("train_flops", "val_flops", "test_flops", "analysis_flops", "seconds"):
        assert totals[key] > 0, key
    assert totals["disk_bytes"] > 0


def test_slurm_limits_come_from_the_spec_when_it_sets_one(tmp_path):
    from vitplas.experiments.launch import _time_limits
    from vitplas.experiments.store import RunState

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "name: t\nbase: {model: tiny-random, img_size: 32, batch_size: 2, steps: 2, "
        "warmup_steps: 0, dataset: digits}\ngrid: {seed: [0, 1]}\n"
    )
    spec = load_spec(spec_file)
    todo = [RunState(run, tmp_path / run.run_id, "missing") for run in expand(spec)]
    assert set(_time_limits(spec, todo).values()) == {30}  # estimated: slack, rounded up
    spec = load_spec(spec_file, ["executor.slurm.time_min=7"])
    assert _time_limits(spec, todo) == {item.run.run_id: 7 for item in todo}


def test_a_cpu_device_is_measured_with_cpu_defaults(monkeypatch):
    from vitplas.experiments import devices

    assert cost.measure_cpu_tflops(n=64, seconds=0.01) > 0
    assert cost.measure_cpu_tflops(n=64, seconds=0.01, precision="bf16") > 0
    with pytest.raises(ValueError, match="precision 'tf32' is not measured on a CPU"):
        cost.measure_cpu_tflops(n=8, precision="tf32")
    rates = {"fp32": 0.1, "bf16": 0.3}
    monkeypatch.setattr(devices, "measure_cpu_tflops", lambda precision="fp32": rates[precision])
    device = cost.declared_device("cpu")
    assert (device.peak("fp32"), device.peak("tf32"), device.peak("bf16")) == (0.1, 0.1, 0.3)
    assert (device.mfu, device.startup_s, device.kind) == (0.5, 10.0, "cpu")
    assert cost.declared_device("CPU", mfu=0.3).mfu == 0.3


def _precision_spec(tmp_path, extra: str = ""):
    spec_file = tmp_path / "p.yaml"
    spec_file.write_text(
        "name: t\nbase: {model: tiny-random, img_size: 32, batch_size: 4, steps: 10, "
        "warmup_steps: 0, eval_every: 5, dataset: digits, tensorboard: false" + extra + "}\n"
        "grid: {amp: [auto, none, tf32, bf16]}\n"
    )
    return load_spec(spec_file)


def test_each_run_is_timed_at_the_precision_it_resolves_to(tmp_path):
    """amp auto: bf16 on a GPU under protocol model, float32 under paper (the original) and
    on a CPU; tf32 only on a GPU; each divides by its own peak."""
    gpu, paper = cost.declared_device("a100", 1.0, 0.0), ", protocol: paper"
    for extra, want in (("", ["bf16", "fp32", "tf32", "bf16"]), (paper, ["fp32"] * 3 + ["bf16"])):
        want[2] = "tf32"  # amp tf32 stays tf32 on a GPU under either protocol
        study = cost.study_cost(_precision_spec(tmp_path, extra), gpu)
        assert [job.precision for job in study.runs] == want
        for job in study.runs:
            assert job.seconds == pytest.approx(job.total_flops / (gpu.peak(job.precision) * 1e12))
    cpu = cost.Device("cpu", 1.0, 1.0, 2.0, 1.0, 0.0, kind="cpu")
    study = cost.study_cost(_precision_spec(tmp_path), cpu)
    assert [job.precision for job in study.runs] == ["fp32", "fp32", "fp32", "bf16"]


def test_the_table_says_the_precision_and_how_much_faster_bf16_would_be(tmp_path):
    from vitplas.experiments.cost_text import format_table

    gpu = cost.declared_device("h100", 1.0, 0.0)
    spec = _precision_spec(tmp_path, ", protocol: paper")
    study = cost.study_cost(spec, gpu)
    text = format_table(study)
    assert "  fp32  " in text and "  tf32  " in text and "  bf16  " in text
    slow = [j for j in study.runs if j.precision != "bf16"]  # fp32 none, auto; tf32
    now = study.totals()["seconds"]
    bf16 = now - sum(j.seconds - gpu.seconds(j.total_flops, "bf16") for j in slow)
    assert "precision: 3 of 4 runs train without bf16 (2 in fp32 and 1 in tf32" in text
    assert f"with amp: bf16 {cost.human(bf16, 's')} ({now / bf16:.1f}x faster)" in text
    bf16_only = load_spec(spec.source, ["grid.amp=[bf16]"])
    assert "precision:" not in format_table(cost.study_cost(bf16_only, gpu))
    limited = load_spec(spec.source, ["executor.slurm.time_min=1"])
    assert "SLURM: the spec's time_min 1 min is below the estimate" in format_table(
        cost.study_cost(limited, gpu)
    )


@pytest.fixture
def custom_runner(monkeypatch) -> str:
    """A user's runner, registered for this test only (specs may name registered jobs only)."""
    monkeypatch.setattr(jobs, "_user_functions", set(jobs._user_functions))  # restored after
    jobs.register_job("mypkg.jobs:train")
    return "mypkg.jobs:train"


def test_a_custom_runner_is_not_estimated(tmp_path, custom_runner):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "name: t\nbase: {model: tiny-random, steps: 10, dataset: digits}\n"
        "grid: {seed: [0, 1]}\nrunner: {function: 'mypkg.jobs:train', config: null}\n"
    )
    spec = load_spec(spec_file)
    assert cost.study_cost(spec).jobs == []  # its configs are not vitplas finetune configs
    assert set(cost.slurm_time_limits(spec, expand(spec)).values()) == {240}


def test_analysis_jobs_count_pairs_radius_images_and_probe_images(tmp_path, custom_runner):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "name: t\nbase: {model: tiny-random, dataset: digits}\ngrid: {seed: [0]}\n"
        "runner: {function: 'mypkg.jobs:train', config: null}\nanalysis:\n"
        "  plasticity: [{model: tiny-random, target: digits, pairs: 8, radius_images: 4}]\n"
        "  probes: [{model: tiny-random, img_size: 32, dataset: digits, max_train: 100}]\n"
    )
    plasticity, probes = cost.study_cost(load_spec(spec_file)).jobs
    backbone = 2 * (EMBED + DEPTH * BLOCK)  # no head: features of the pretrained model
    pair = flops.pair_flops(flops.meta_model("tiny-random", None, 0))
    assert plasticity.flops["analysis"] == 8 * pair + 4 * backbone
    # digits: 1,797 images, 20% test (359), val 20% of the rest (288): 1,150 train
    assert probes.flops["analysis"] == (100 + 359) * backbone


def test_slurm_submission_sends_one_array_per_estimated_limit(tmp_path, monkeypatch):
    import contextlib

    from vitplas.experiments import launch
    from vitplas.experiments.store import RunState

    calls = []

    class FakeJob:
        def __init__(self, job_id: str) -> None:
            self.job_id = job_id

    class FakeExecutor:  # records what submitit would be asked
        def __init__(self, folder, cluster):
            self.timeout = None

        def update_parameters(self, **params):
            self.timeout = params.get("timeout_min", self.timeout)

        @contextlib.contextmanager
        def batch(self):
            calls.append([])
            yield

        def submit(self, fn, *args):
            calls[-1].append((self.timeout, args[3]["steps"]))
            return FakeJob(f"{len(calls)}_{len(calls[-1])}")

    monkeypatch.setattr(launch.submitit, "AutoExecutor", FakeExecutor)
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "name: t\nbase: {model: tiny-random, warmup_steps: 0, dataset: digits}\n"
        "grid: {steps: [1, 20000, 2]}\n"
    )
    spec = load_spec(spec_file)
    todo = [RunState(run, tmp_path / run.run_id, "missing") for run in expand(spec)]
    for item in todo:
        item.folder.mkdir()

    def limits(spec, runs):  # the estimate (tested above), here a long run and two short
        return {run.run_id: 90 if run.config["steps"] > 2 else 30 for run in runs}

    monkeypatch.setattr(cost, "slurm_time_limits", limits)
    jobs = launch._submit_slurm(spec, todo, tmp_path / "submitit", parallel=2)
    assert calls == [[(30, 1), (30, 2)], [(90, 20000)]]
    assert [j.job_id for j in jobs] == ["1_1", "2_1", "1_2"]  # in the order of the runs


def test_auto_and_rival_runs_are_counted_and_leave_the_shared_model_clean(tmp_path):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "name: t\nselect_by: best_val_acc\n"
        "base: {model: tiny-random, img_size: 32, batch_size: 4, steps: 10, "
        "warmup_steps: 0, eval_every: 5, dataset: digits, tensorboard: false}\n"
        "grid: {train: [lora, 'auto:fisher', all, bitfit]}\n"
        "runner: {function: 'vitplas.selection.auto:finetune'}\n"
    )
    spec = load_spec(spec_file)
    study = cost.study_cost(spec, cost.declared_device(1.0, 1.0, 0.0))
    by_label = {job.shape.split(" b4 ")[1]: job for job in study.runs}
    assert set(by_label) == {"lora", "all (auto)", "all", "bitfit"}
    assert by_label["all (auto)"].flops == by_label["all"].flops  # the upper bound: all
    assert any("train=[auto] runs" in n for n in by_label["all (auto)"].notes)
    # LoRA's adapters were injected into a copy: the later plain runs count a plain model
    assert by_label["lora"].flops["train"] < by_label["all"].flops["train"]
    model = flops.meta_model("tiny-random", 32, CLASSES)
    plain, _ = flops.train_step_flops(model, _tiny(["all"]))
    assert by_label["all"].flops["train"] == 10 * plain
    assert set(cost.slurm_time_limits(spec, expand(spec)).values()) == {30}
