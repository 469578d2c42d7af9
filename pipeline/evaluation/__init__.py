"""The eval stage's pieces: model inference (option log-likelihoods, generation), metrics, reports."""
