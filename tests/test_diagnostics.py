import math

import torch

from pipeline.student.diagnostics import answer_health


def _batch(first_pred: list[int], eos_logit: float):
    """Two-token answers (a word, then EOS id 0) after a 2-token prompt; vocabulary 5."""
    labels = torch.tensor([[-100, -100, 3, 0], [-100, -100, 4, 0], [-100, -100, 2, 0]])  # [3, 4]
    logits = torch.zeros(3, 4, 5)  # row p predicts label p + 1
    for b, token in enumerate(first_pred):
        logits[b, 1, token] = 5.0  # the first answer token
        logits[b, 2, 0] = eos_logit  # EOS after it
    return logits, labels


def test_a_healthy_student_ends_its_answers_and_varies_its_first_token():
    health = answer_health(*_batch([3, 4, 2], eos_logit=8.0))
    assert health["eos_p"] > 0.99
    assert math.isclose(health["first_top_share"], 1 / 3) and math.isclose(health["first_top_share_gold"], 1 / 3)


def test_a_degenerate_student_shows_no_eos_and_one_answer_for_all():
    health = answer_health(*_batch([3, 3, 3], eos_logit=-8.0))
    assert health["eos_p"] < 0.01
    assert health["first_top_share"] == 1.0 and math.isclose(health["first_top_share_gold"], 1 / 3)


def test_no_answer_tokens_give_nan_not_an_error():
    health = answer_health(torch.zeros(1, 3, 5), torch.full((1, 3), -100))
    assert all(math.isnan(v) for v in health.values())
