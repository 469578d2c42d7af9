"""Training-step cost of the ULD term: ms/step for CE alone, CE + top-k ULD (what distill runs), CE + full-sort ULD.

The code is ``pipeline.devtools.benchmarks.step`` (so an installed ``kdpipe gpu-check`` has it); this is its command.
"""

from pipeline.devtools.benchmarks.step import main

if __name__ == "__main__":
    main()
