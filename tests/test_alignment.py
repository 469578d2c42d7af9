import numpy as np
from transformers import AutoTokenizer

from pipeline.alignment import align_spans, vocab_map
from pipeline.text import token_bytes


def test_token_bytes_spell_the_text_for_both_demo_tokenizers(demo_models):
    text = "the café sat, 42 times"
    student = AutoTokenizer.from_pretrained(demo_models["student"])
    s_bytes = token_bytes(student)
    ids = student(" " + text, add_special_tokens=False).input_ids
    assert b"".join(s_bytes[i] for i in ids) == (" " + text).encode()
    teacher = AutoTokenizer.from_pretrained(demo_models["teacher"])
    t_bytes = token_bytes(teacher, size=len(teacher) + 3)
    assert len(t_bytes) == len(teacher) + 3 and t_bytes[-3:] == [b"", b"", b""]
    ids = [i for i in teacher(text, add_special_tokens=False).input_ids if i != teacher.unk_token_id]
    assert b"".join(t_bytes[i] for i in ids).decode(errors="replace").startswith(" the caf")
    for tok in (student, teacher):
        assert all(b == b"" for i, b in enumerate(token_bytes(tok)) if i in tok.all_special_ids)


def test_vocab_map_is_one_to_one_on_exact_byte_strings():
    teacher = [b"", b" a", b"b", b"b", b"c"]
    student = [b"", b"c", b" a", b"x", b"c"]
    m = vocab_map(teacher, student)
    assert m.teacher_to_student.tolist() == [-1, 2, -1, -1, 1]
    assert m.student_matched.tolist() == [False, True, True, False, False]
    assert m.matched == 2 and m.matched_share == 2 / 5


def test_align_spans_groups_tokens_that_end_at_the_same_byte():
    student = np.array([(0, 1), (1, 3), (3, 7), (7, 11)])
    teacher = np.array([(0, 3), (3, 5), (5, 7), (7, 11)])
    groups = [(list(s), list(t)) for s, t in align_spans(student, teacher)]
    assert groups == [([0, 1], [0]), ([2], [1, 2]), ([3], [3])]
    # no common end before the last byte: one group; nothing common: none
    assert [(list(s), list(t)) for s, t in align_spans(student[:3], np.array([(0, 2), (2, 7)]))] == [
        ([0, 1, 2], [0, 1])
    ]
    assert align_spans(student[:2], np.array([(0, 2)])) == []
