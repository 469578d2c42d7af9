"""Forward + backward time of `uld_loss` (student top-k) against the same loss with a full vocabulary sort.

The code is ``pipeline.devtools.benchmarks.uld`` (so an installed ``kdpipe gpu-check`` has it); this is its command.
"""

from pipeline.devtools.benchmarks.uld import main

if __name__ == "__main__":
    main()
