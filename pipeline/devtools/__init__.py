"""Developer tools: the demo models, the GPU check and the benchmark code it runs, synthetic caches."""
