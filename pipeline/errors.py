"""Errors a user can cause while naming a model, kept apart from ``pipeline.models`` so that catching them
(the CLI does, for every command) does not load torch and transformers into commands that need neither."""


class ModelError(RuntimeError):
    """A model that cannot be loaded as asked; the message names it and says what to do."""
