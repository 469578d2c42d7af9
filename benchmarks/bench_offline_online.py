"""Offline against online distillation: a training step from the cache against one that runs the teacher.

The code is ``pipeline.devtools.benchmarks.offline_online`` (so an installed ``kdpipe gpu-check`` has it); this is its
command:

    PYTHONPATH=. python benchmarks/bench_offline_online.py [--teacher models/tiny-t5-teacher]
        [--student models/tiny-gpt2-student] [--examples 192] [--batch-size 16] [--steps 12] [--device auto]
"""

from pipeline.devtools.benchmarks.offline_online import main

if __name__ == "__main__":
    main()
