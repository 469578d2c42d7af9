"""Data-path speed: teacher rows decoded and delivered to the training loop, and the loader's memory.

The code is ``pipeline.devtools.benchmarks.data_path`` (so an installed ``kdpipe gpu-check`` has it); this is
its command.
"""

from pipeline.devtools.benchmarks.data_path import main

if __name__ == "__main__":
    main()
