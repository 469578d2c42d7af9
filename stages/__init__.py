"""One module per stage (teacher_cache, distill, eval), each with one public ``run(cfg)``."""
