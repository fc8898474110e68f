import json

import pytest

from circuitdyn.models.zoo import char_tokenizer
from circuitdyn.tasks import (
    IOI,
    Addition,
    GreaterThan,
    TaskError,
    TaskExample,
    from_jsonl,
    from_records,
    get_task,
    tokenize_pairs,
)


def test_addition_pairs_align_and_differ():
    tok = char_tokenizer()
    ex = Addition().examples(16, seed=0)
    batch = tokenize_pairs(tok, ex, answer_tokens=2)
    assert batch.clean.shape == batch.corrupt.shape == (16, 7)
    assert all(e.answer[0] != e.foil[0] for e in ex)
    assert (batch.answer_pos == 5).all()
    assert Addition().examples(4, seed=3) == Addition().examples(4, seed=3)


def test_addition_splits_are_disjoint():
    train = {(e.meta["a"], e.meta["b"]) for e in Addition().examples(3000, split="train")}
    test = {(e.meta["a"], e.meta["b"]) for e in Addition().examples(3000, split="test")}
    assert not train & test


def test_rewards():
    ex = TaskExample("23+58=", "11+11=", "81", "22")
    assert Addition().reward(ex, "81<eos>") == 1.0 and Addition().reward(ex, "812") == 0.0
    gt = GreaterThan().examples(1)[0]
    yy = gt.meta["yy"]
    assert GreaterThan().reward(gt, f"{yy + 5:02d}") == 1.0 and GreaterThan().reward(gt, f"{yy:02d}") == 0.0
    ioi = IOI().examples(1)[0]
    assert IOI().reward(ioi, ioi.answer + ".") == 1.0


def test_length_mismatch_names_the_pair():
    tok = char_tokenizer()
    bad = [TaskExample("1+1=", "2+2=", "2", "4"), TaskExample("10+10=", "1+1=", "20", "2")]
    with pytest.raises(TaskError, match="pair 1"):
        tokenize_pairs(tok, bad)


def test_empty_and_multi_token_answers():
    tok = char_tokenizer()
    with pytest.raises(TaskError, match="empty"):
        tokenize_pairs(tok, [])
    with pytest.raises(TaskError, match="single"):
        tokenize_pairs(tok, [TaskExample("1+1=", "2+2=", "20", "4")], require_single_token_answers=True)


def test_unknown_task():
    with pytest.raises(TaskError, match="addition"):
        get_task("nope")


def test_user_data(tmp_path):
    rec = [{"clean": "1+1=", "corrupt": "2+2=", "answer": "2", "foil": "4", "note": "x"}]
    task = from_records(rec)
    assert task.examples(5)[0].meta == {"note": "x"}
    with pytest.raises(TaskError, match="lacks"):
        from_records([{"clean": "a"}])
    with pytest.raises(TaskError, match="empty"):
        from_records([])
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rec * 3))
    assert len(get_task(str(path)).examples(10)) == 3
    path.write_text("{not json")
    with pytest.raises(TaskError, match="d.jsonl:1"):
        from_jsonl(path)


def test_ioi_and_greater_than_shapes():
    for task in (IOI(), GreaterThan()):
        ex = task.examples(10, seed=1)
        assert len(ex) == 10 and all(e.clean != e.corrupt for e in ex)


def test_qa_addition_pairs_align_differ_and_split():
    from circuitdyn.tasks import QAAddition, TaskProblems

    examples = QAAddition().examples(64, seed=0)
    # clean and corrupt differ only in digits, position by position: aligned under a digit-splitting tokenizer
    assert all(len(e.clean) == len(e.corrupt) and all(a == b or (a.isdigit() and b.isdigit())
                                                      for a, b in zip(e.clean, e.corrupt)) for e in examples)
    assert all(e.answer[0] != e.foil[0] and e.clean.endswith("Answer: ") for e in examples)
    assert QAAddition().reward(examples[0], examples[0].answer + " apples") == 1.0
    assert QAAddition().reward(examples[0], "x" + examples[0].answer) == 0.0
    train = {(e.meta["a"], e.meta["b"]) for e in QAAddition().examples(2000, split="train")}
    test = {(e.meta["a"], e.meta["b"]) for e in QAAddition().examples(2000, split="test")}
    assert not train & test and len(train) == 140 and len(test) == 60
    problems = TaskProblems(QAAddition()).problems(100)  # distinct problems only: all 60 held-out ones
    assert len(problems) == len({p.question for p in problems}) == 60
    # the real-model main job's probes: the same 200 problems, 160 held out, the 60 among them
    wide = get_task("qa_addition_160")
    wide_test = {(e.meta["a"], e.meta["b"]) for e in wide.examples(4000, split="test")}
    wide_train = {(e.meta["a"], e.meta["b"]) for e in wide.examples(4000, split="train")}
    assert len(wide_test) == 160 and len(wide_train) == 40 and test <= wide_test and not wide_train & wide_test
    with pytest.raises(TaskError, match="held_out must be in"):
        QAAddition(held_out=1.0)
