"""CLI behaviour not tied to one stage's results: what `make eval` relies on to follow CONFIG alone."""

import json

from click.testing import CliRunner

from pipeline.cli import main
from tests.helpers import one_line_error


def test_eval_config_teacher_evaluates_the_config_files_teacher_first(demo_models, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"teacher_cache:\n  teacher: {demo_models['teacher']}\n"
        "eval:\n  tasks: [demo_yesno]\n  limit: 4\n  device: cpu\n  batch_size: 4\n"
    )
    args = ["eval", "--config", str(config), "--config-teacher", "--model", str(demo_models["student"])]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(results["models"]) == ["tiny-t5-teacher", "tiny-gpt2-student"]
    # names given for the --model models alone: the config's teacher is "teacher"
    named = CliRunner().invoke(main, [*args, "--name", "ft", "--out", str(tmp_path / "named")])
    assert named.exit_code == 0, named.output
    assert list(json.loads((tmp_path / "named" / "results.json").read_text())["models"]) == ["teacher", "ft"]


def test_eval_config_teacher_needs_a_config_file(demo_models, tmp_path):
    args = ["eval", "--config-teacher", "--model", str(demo_models["student"]), "--out", str(tmp_path / "e")]
    one_line_error(CliRunner().invoke(main, args), "--config-teacher: give the --config file")
