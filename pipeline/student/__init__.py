"""The student's side of distill: the streaming cache reader, token alignment, training pieces, health signs
and the model card."""
