"""kdpipe: cross-tokenizer knowledge distillation from an offline teacher-logit cache."""

__version__ = "0.1.0"
