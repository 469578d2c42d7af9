import dataclasses

import pytest
import yaml

from pipeline.config import ConfigError, DistillConfig, EvalConfig, TeacherCacheConfig, load, to_dict
from tests.conftest import REPO


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_file_values_then_flags_override(tmp_path):
    path = write(tmp_path, "teacher_cache:\n  top_k: 32\n  tasks: {demo_qa: 5}\n  seed: 3\n")
    cfg = load(TeacherCacheConfig, path, "teacher_cache", {"seed": 7, "batch_size": None})
    assert (cfg.top_k, cfg.seed, cfg.tasks, cfg.batch_size) == (32, 7, {"demo_qa": 5}, 32)
    assert to_dict(cfg)["top_k"] == 32


def test_unknown_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'topk'.*known: .*top_k"):
        load(TeacherCacheConfig, write(tmp_path, "teacher_cache:\n  topk: 3\n"), "teacher_cache")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("teacher_cache:\n  top_k: many\n", "--top-k: expected int, got 'many'"),
        ("teacher_cache:\n  top_k: 2.5\n", "--top-k: expected an integer"),
        ("teacher_cache:\n  store_ids: maybe\n", "--store-ids: expected true or false"),
        ("teacher_cache:\n  tasks: [a, b]\n", "--tasks: expected a mapping"),
        ("teacher_cache:\n  tasks: {demo_qa: 0}\n", "--tasks: demo_qa=0 must be a positive"),
        ("teacher_cache:\n  answers: silver\n", "--answers: 'silver' is not one of gold, teacher"),
        ("teacher_cache: [1, 2]\n", "section 'teacher_cache'.* must be a mapping"),
        ("teacher_cache: {top_k: [\n", "not valid YAML"),
    ],
)
def test_bad_values_name_the_flag(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load(TeacherCacheConfig, write(tmp_path, text), "teacher_cache")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(TeacherCacheConfig, tmp_path / "none.yaml", "teacher_cache")


SHIPPED_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
STAGE_SECTIONS = {"teacher_cache": TeacherCacheConfig, "distill": DistillConfig, "eval": EvalConfig}


def test_the_configs_folder_is_found():
    assert len(SHIPPED_CONFIGS) >= 2, REPO / "configs"


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_every_stage_section(path):
    """Every configs/*.yaml (a new one too): only stage sections, each a valid config of that stage."""
    sections = yaml.safe_load(path.read_text())
    assert set(sections) <= set(STAGE_SECTIONS), f"{path.name}: unknown sections {set(sections) - set(STAGE_SECTIONS)}"
    teacher = load(TeacherCacheConfig, path, "teacher_cache")
    assert teacher.mixture()["tasks"] == teacher.tasks  # distill fingerprints this mixture to check its cache
    distill = load(DistillConfig, path, "distill")
    evaluation = load(EvalConfig, path, "eval", {"models": ("m",)})
    assert evaluation.models == ("m",) and evaluation.tasks
    # both shipped recipes follow the official ULD recipe: k = 64 cached probabilities, λ = 1.5
    assert teacher.top_k == 64 and distill.uld_weight == 1.5


def test_shipped_config_values_reach_the_stage_configs():
    assert load(TeacherCacheConfig, REPO / "configs" / "flan-t5-xxl.yaml", "teacher_cache").quantize == "nf4"
    assert load(DistillConfig, REPO / "configs" / "demo.yaml", "distill", {"uld_weight": 0.0}).uld_weight == 0.0


def test_operational_fields_are_marked_on_the_fields():
    """What a resumed distill run may change: how it runs, never what it computes."""
    from pipeline.config import operational_fields

    expected = {
        "prefetch",
        "checkpoint_every",
        "keep_checkpoint",
        "parallel",
        "accept_cache",
        "cache_checksums",
        "report_to",
    }
    assert operational_fields(DistillConfig) == expected | {"cache", "out", "resume", "expected_mixture"}
    # a cache records its config without where it was written or by which worker, so parts and copies agree
    # (--compare-unquantized writes no cache)
    assert operational_fields(TeacherCacheConfig) == {"out", "worker", "num_workers", "compare_unquantized"}


# Fields that mean something else in each stage (each documents its own), and fields about a different model in each
# (pipeline.config.shared builds them from the model's name). Any other field two stage configs share is one field.
PER_STAGE = {"out", "tasks", "split", "seed", "limit", "batch_size", "chat_template", "max_prompt_tokens"}
PER_STAGE |= {"max_answer_tokens", "resume"}
PER_MODEL = {"revision", "device", "quantize"}


def test_a_field_two_stages_share_is_documented_once():
    by_name: dict[str, list[dataclasses.Field]] = {}
    for cls in (TeacherCacheConfig, DistillConfig, EvalConfig):
        for f in dataclasses.fields(cls):
            by_name.setdefault(f.name, []).append(f)
    shared = {name: fs for name, fs in by_name.items() if len(fs) > 1 and name not in PER_STAGE}
    assert set(shared) >= PER_MODEL | {"fields", "data_dir", "task_splits", "field_caps"}
    for name, fs in shared.items():
        defaults = {(f.default, f.metadata["choices"]) for f in fs if f.default is not dataclasses.MISSING}
        factories = {repr(f.default_factory()) for f in fs if f.default_factory is not dataclasses.MISSING}
        assert len(defaults) + len(factories) == 1, name
        if name not in PER_MODEL:
            assert len({f.metadata["help"] for f in fs}) == 1, name
