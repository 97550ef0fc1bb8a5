"""The synthetic visual QA source: deterministic per index, valid records, answers on the picture."""

import io

import numpy as np
import pytest
from PIL import Image

from data_pipelines.formats import validate
from data_pipelines.synthetic import (
    COLOURS,
    DIGITS,
    HEIGHTS,
    QUESTIONS,
    SHAPES,
    SIZES,
    WIDTHS,
    WORDS,
    SyntheticVisualQA,
    blind_baseline,
)


def test_records_are_deterministic_valid_and_varied():
    src = SyntheticVisualQA(num_records=200, seed=3)
    assert len(src) == 200
    assert src[7] == SyntheticVisualQA(num_records=200, seed=3)[7]  # a pure function of (seed, index)
    assert src[7] != SyntheticVisualQA(num_records=200, seed=4)[7]
    sizes, answers = set(), {q: set() for q in QUESTIONS.values()}
    for i in range(200):
        r = src[i]
        assert validate(r) == []
        img = np.asarray(Image.open(io.BytesIO(r["images"][0])))
        sizes.add(img.shape[:2])
        assert img.shape[1] in WIDTHS and img.shape[0] in HEIGHTS and img.min() < 90  # ink is drawn
        answers[r["messages"][1]["content"][1]["text"]].add(r["messages"][2]["content"])  # [0]: system
    assert len(sizes) == len(SIZES)  # varied sizes and aspect ratios
    assert answers[QUESTIONS["word"]] <= set(WORDS) and len(answers[QUESTIONS["word"]]) > 6
    assert answers[QUESTIONS["number"]] <= set(DIGITS) and len(answers[QUESTIONS["number"]]) > 6
    assert answers[QUESTIONS["colour"]] <= set(COLOURS) and len(answers[QUESTIONS["colour"]]) >= 5
    assert answers[QUESTIONS["shape"]] == set(SHAPES)


def test_the_shape_has_the_colour_the_answer_names():
    src = SyntheticVisualQA(num_records=40, seed=1, tasks=("colour",))
    for i in range(40):
        r = src[i]
        img = np.asarray(Image.open(io.BytesIO(r["images"][0]))).reshape(-1, 3).astype(int)
        want = np.array(COLOURS[r["messages"][-1]["content"]])
        assert (np.abs(img - want).sum(1) == 0).sum() > 50


def test_blind_baseline_is_low():
    base = blind_baseline(SyntheticVisualQA(seed=0), SyntheticVisualQA(num_records=400, seed=9), num_train=1000)
    assert 0.05 < base < 0.3


def test_bad_arguments():
    with pytest.raises(IndexError, match="record 5 out of range"):
        SyntheticVisualQA(num_records=5)[5]
    with pytest.raises(ValueError, match="tasks"):
        SyntheticVisualQA(tasks=("smell",))


def test_all_questions_asks_every_answerable_question_once():
    src = SyntheticVisualQA(num_records=20, seed=2, all_questions=True)
    for i in range(20):
        r = src[i]
        assert validate(r) == []
        users = [m for m in r["messages"] if m["role"] == "user"]
        questions = {c["text"] for m in users for c in m["content"] if c["type"] == "text"}
        assert len(users) == 3 and len(questions) == 3
        assert QUESTIONS["colour"] in questions and QUESTIONS["shape"] in questions
        assert sum(c["type"] == "image" for m in users for c in m["content"]) == 1
