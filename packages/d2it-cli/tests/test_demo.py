"""The demo's pieces: plans, invoking steps, failures and the HTML report (the full run is an integration test)."""

import json

import attrs
import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from d2it.errors import D2itError
from d2it_cli.commands.demo import ClickRunner
from d2it_cli.demo import DATASETS, STEP_NAMES, Demo, DemoError, DemoPlan, override_plan, plan_for, run_demo
from d2it_cli.demo.report import (
    Figure,
    Section,
    StepTiming,
    build_report,
    class_rows,
    loss_figures,
    paired_rows,
    spread,
    swd_section,
    timing_table,
    write_index,
)
from d2it_cli.main import D2itGroup


@pytest.mark.parametrize("data", DATASETS)
def test_plans_scale_with_device_and_quick(data):
    quick, full, gpu = plan_for("cpu", True, data), plan_for("cpu", False, data), plan_for("cuda", False, data)
    for field in ("dvae_steps", "grain_steps", "content_steps"):
        assert getattr(quick, field) < getattr(full, field) < getattr(gpu, field)
    assert quick.image_size == full.image_size == gpu.image_size == 64
    assert plan_for("cuda:1", True, data).image_size == 64
    assert json.loads(json.dumps(full.summary()))["dvae_steps"] == full.dvae_steps
    assert {quick.data, full.data, gpu.data} == {data}


def test_openmoji_is_the_default_and_unconditional():
    plan = plan_for("cpu", False)
    assert plan.data == "openmoji" and plan.num_classes == 1 and plan.cfg_scale == 1.0
    synthetic = plan_for("cpu", False, "synthetic")
    assert synthetic.num_classes == 4 and synthetic.cfg_scale == 2.0 and synthetic.sampler == "ddim"
    with pytest.raises(D2itError, match="openmoji, synthetic"):
        plan_for("cpu", False, "nope")
    with pytest.raises(D2itError, match="--data"):
        override_plan(plan, ["data=synthetic"])
    assert override_plan(plan, ["num_images=100"]).num_images == 100


class RecordingRunner:
    """A `Runner` that records the commands and succeeds without running them."""

    def __init__(self):
        self.commands = []

    def run(self, args):
        self.commands.append(args)
        return "ok"

    def accepts(self, path, option):
        return True


def _option(args, name):
    return [args[i + 1] for i, a in enumerate(args) if a == name]


def test_synthetic_commands_are_class_conditional(tmp_path):
    runner = RecordingRunner()
    plan = plan_for("cpu", False, "synthetic")
    Demo(runner=runner, out=tmp_path, plan=plan, device="cpu", quiet=True).run_pipeline()
    build, thresholds, dvae, encode, grain, content, sample = runner.commands
    assert _option(build, "--num-classes") == ["4"]
    for step in (thresholds, dvae, encode):
        assert _option(step, "--data") == ["synthetic:512"] and "--data-option" not in step
    assert "--classes-uniform" in sample and _option(sample, "--cfg-scale") == ["2.0"]
    assert _option(sample, "--sampler") == ["ddim"]


def test_openmoji_commands_are_unconditional(tmp_path):
    runner = RecordingRunner()
    plan = attrs.evolve(plan_for("cpu", True), num_images=100)
    Demo(runner=runner, out=tmp_path, plan=plan, device="cpu", quiet=True).run_pipeline()
    build, thresholds, dvae, encode, grain, content, sample = runner.commands
    assert _option(build, "--num-classes") == ["1"]
    for step in (thresholds, dvae, encode):
        assert _option(step, "--data") == ["openmoji"] and _option(step, "--data-option") == ["limit=100"]
    assert _option(sample, "--cfg-scale") == ["1.0"] and _option(sample, "--sampler") == ["dpmpp-2m"]
    runner = RecordingRunner()
    Demo(runner=runner, out=tmp_path, plan=plan_for("cpu", False), device="cpu", quiet=True).run_pipeline()
    assert "--data-option" not in runner.commands[1]  # the whole train split


@pytest.mark.parametrize("data", DATASETS)
def test_run_demo_records_data_and_results(data, tmp_path):
    """With a runner that writes nothing, the report is empty but timings.json and results.json are complete."""
    index = run_demo(RecordingRunner(), tmp_path, device="cpu", quick=True, quiet=True, data=data)
    assert index.is_file()
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["data"] == data and timings["plan"]["data"] == data
    assert [s["name"] for s in timings["steps"]] == list(STEP_NAMES)
    assert json.loads((tmp_path / "results.json").read_text())["data"] == data


def test_demo_command_rejects_unknown_data(d2it_cli, tmp_path):
    result = CliRunner().invoke(d2it_cli, ["demo", "--data", "nope", "--out", tmp_path / "d"])
    assert result.exit_code == 2 and "openmoji" in result.output


@pytest.fixture
def toy_cli():
    """A group like `d2it`'s with one command that succeeds and two that fail."""

    @click.group(cls=D2itGroup)
    def cli():
        pass

    @cli.command()
    @click.option("--n", type=int, default=1)
    def ok(n):
        click.echo(f"ok {n}")

    @cli.command()
    def bad():
        raise D2itError("this step cannot work")

    @cli.command()
    @click.option("--n", type=int)
    def usage(n):
        pass

    return cli


def test_invoke_times_steps_and_stops_on_failure(toy_cli, tmp_path):
    demo = Demo(runner=ClickRunner(toy_cli), out=tmp_path, plan=DemoPlan(), device="cpu", quiet=True)
    demo.invoke("first", ["ok", "--n", 3])
    assert demo.timings[0].status == "ok" and demo.timings[0].command == "d2it ok --n 3"
    with pytest.raises(DemoError, match="'second' failed"):
        demo.invoke("second", ["bad"])
    assert demo.timings[1].status.startswith("failed")
    with pytest.raises(DemoError):
        demo.invoke("third", ["usage", "--n", "x"])
    assert "failed" in demo.timings[2].status


def test_supports_reads_the_real_commands(d2it_cli, tmp_path):
    demo = Demo(runner=ClickRunner(d2it_cli), out=tmp_path, plan=DemoPlan(), device="cpu")
    assert demo.supports(["train", "dvae"], "--lr")
    assert demo.supports(["sample"], "--classes-uniform")
    assert not demo.supports(["train", "nothing"], "--lr")
    assert not demo.supports(["sample"], "--no-such-option")


def test_demo_command_failure_exits_2(toy_cli, tmp_path, monkeypatch):
    """A failing step is one sentence and exit code 2, with the partial report written."""
    from d2it_cli.commands.demo import demo as demo_command

    toy_cli.add_command(demo_command)
    result = CliRunner().invoke(toy_cli, ["demo", "--quick", "--quiet", "--device", "cpu", "--out", tmp_path / "d"])
    assert result.exit_code == 2
    assert "demo step 'build' failed" in result.output
    page = (tmp_path / "d" / "index.html").read_text()
    assert "A step failed" in page and "<td>build</td>" in page
    timings = json.loads((tmp_path / "d" / "timings.json").read_text())
    assert timings["steps"][0]["status"] != "ok"


def test_timing_table_and_index(tmp_path):
    steps = [StepTiming("build", "d2it build --out <x>", 1.25), StepTiming("train", "d2it train", 10.0, "failed: x")]
    table = timing_table(steps)
    assert "&lt;x&gt;" in table and "11.2" in table and "failed: x" in table
    png = tmp_path / "figs" / "a.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG")
    index = write_index(
        tmp_path,
        "t <demo>",
        "intro",
        steps,
        [Section("S & T", text="words", figures=[Figure(png, "cap")], tables=[(["a"], [[1.5]])])],
    )
    page = index.read_text()
    assert 'src="figs/a.png"' in page and "S &amp; T" in page and "t &lt;demo&gt;" in page
    assert '<td class="num">1.5</td>' in page


def test_loss_figures_from_logs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "loss": 1.0 / s, "mse": 0.5 / s, "lr": 1e-4, "time": 0.0, "zero": 0.0} for s in range(1, 21)]
    (run / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    figures, finals = loss_figures({"train x": run, "train empty": tmp_path / "none"}, tmp_path)
    assert [f.path.name for f in figures] == ["loss_train_x.png"] and figures[0].path.is_file()
    assert finals == [["train x", 20, 0.05, "mse=0.025"]]


def test_class_rows_layout():
    images = np.zeros((6, 16, 16, 3), np.uint8)
    labels = np.array([0, 1, 0, 1, 2, 2])
    maps = np.zeros((6, 1, 1), np.int64)
    with_maps = class_rows(images, labels, maps, 3, 2, 2)
    without = class_rows(images, labels, None, 3, 2, 2)
    assert with_maps.shape[1] == without.shape[1] and with_maps.shape[0] > without.shape[0]
    assert class_rows(images, labels, None, 0, 2, 2) is None


def test_paired_rows_and_spread():
    images = np.zeros((10, 16, 16, 3), np.uint8)
    grid = paired_rows(images, np.zeros((10, 1, 1), np.int64), 8, 2, zoom=2)
    assert grid.shape[0] == 4 * (32 + 4) and grid.shape[1] == 8 * (32 + 2) + 2
    assert spread(4, 10) == [0, 2, 5, 7] and spread(4, 3) == [0, 1, 2]


def test_swd_section_reports_samples_and_floor():
    gen = torch.Generator().manual_seed(0)
    heldout = torch.rand(6, 3, 16, 16, generator=gen) * 2 - 1
    train = torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1
    samples = np.zeros((4, 16, 16, 3), np.uint8)
    section, results = swd_section(samples, heldout, train)
    assert set(results["swd"]) == set(results["swd_floor"]) == {"swd", "swd_16"}
    assert results["swd"]["swd"] > results["swd_floor"]["swd"] > 0  # flat images are far from noise
    headers, rows = section.tables[0]
    assert "floor" in headers[2] and rows[-1][0] == "mean" and "lower is better" in section.text


def test_report_of_an_empty_run(tmp_path):
    demo = Demo(runner=None, out=tmp_path, plan=DemoPlan(), device="cpu")
    page = build_report(demo, failed=True).read_text()
    assert "A step failed" in page and "<h2>Files</h2>" in page
    assert "<img" not in page


def test_step_names_cover_the_pipeline():
    assert STEP_NAMES[0] == "build" and STEP_NAMES[-1] == "report" and "train content" in STEP_NAMES
