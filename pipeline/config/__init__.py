"""Stage configs: one frozen dataclass per stage, each field documented once.

The click options and their ``--help`` are generated from the fields (``click_options``), and a YAML config
file is read section by section (``load``): file values first, then any flag given on the command line.
Unknown keys are errors; ``__post_init__`` validates and names the flag and the bad value.

- ``framework``: the field (``option``), the checks, loading a section, the click options; knows no stage.
- ``shared``: what more than one stage holds (the fields they share, the demo mixture, the text limits).
- ``teacher_cache``, ``distill``, ``eval``, ``gpu_check``: one config each.
"""

from pipeline.config.distill import DistillConfig as DistillConfig
from pipeline.config.eval import EvalConfig as EvalConfig
from pipeline.config.framework import SECTIONS as SECTIONS
from pipeline.config.framework import ConfigError as ConfigError
from pipeline.config.framework import brief as brief
from pipeline.config.framework import click_options as click_options
from pipeline.config.framework import flag_name as flag_name
from pipeline.config.framework import load as load
from pipeline.config.framework import operational_fields as operational_fields
from pipeline.config.framework import option as option
from pipeline.config.framework import read_section as read_section
from pipeline.config.framework import to_dict as to_dict
from pipeline.config.gpu_check import GpuCheckConfig as GpuCheckConfig
from pipeline.config.shared import DEMO_MIXTURE as DEMO_MIXTURE
from pipeline.config.shared import SPLITS as SPLITS
from pipeline.config.teacher_cache import TeacherCacheConfig as TeacherCacheConfig
