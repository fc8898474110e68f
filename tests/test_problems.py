"""Math problems: the word-problem generator, GSM8K/MATH files, answer normalisation and grading."""

import json

import pytest

from circuitdyn.tasks import (
    Addition,
    Problem,
    TaskError,
    TaskProblems,
    WordProblems,
    answers_match,
    final_answer,
    get_problem_set,
    load_gsm8k,
    load_math,
    normalize_answer,
    problems_sha256,
)


def test_word_problems_are_seeded_and_cover_every_template():
    wp = WordProblems()
    a, b = wp.problems(12, seed=3), wp.problems(12, seed=3)
    assert a == b and problems_sha256(a) == problems_sha256(b)
    assert problems_sha256(wp.problems(12, seed=4)) != problems_sha256(a)
    assert {p.meta["template"] for p in a} == {"add", "take", "buy_and_pay", "share", "rate", "groups"}
    assert {p.meta["level"] for p in WordProblems(levels=(0,)).problems(4)} == {0}
    with pytest.raises(TaskError, match="levels"):
        WordProblems(levels=(7,))


def solve(question: str) -> int:
    """An independent solver for the templates, from the numbers in the question text."""
    import re

    n = [int(x) for x in re.findall(r"\d+", question)]
    if "gets" in question and "more" in question and "How many" in question and len(n) == 2:
        return n[0] + n[1]
    if "gave away" in question or "eats" in question:
        return n[0] - n[1]
    if "change" in question:
        return n[2] - n[0] * n[1]
    if "shares them equally" in question:
        return (n[0] + n[1]) // n[2]
    if "saves" in question:
        return n[0] * n[1] + n[2] - n[3]
    if "boxes" in question:
        return n[0] * n[1] - n[2] + n[3] * n[4]
    raise AssertionError(question)


def test_word_problem_answers_are_right_and_verified():
    wp = WordProblems()
    for p in wp.problems(60, seed=1) + WordProblems(levels=(0,)).problems(20, seed=1):
        assert int(p.answer) == solve(p.question) >= 0, p.question
        assert "-" not in p.question.split("?")[0], p.question  # no negative counts
        assert wp.verify(p, f"Let me think. So it is {p.answer}.")
        assert wp.verify(p, f"blah 3 + 4 #### {p.answer}")
        assert not wp.verify(p, f"#### {int(p.answer) + 1}")
        assert not wp.verify(p, "I do not know")


@pytest.mark.parametrize("a, b", [("1,234", "1234"), ("3/4", "\\frac{3}{4}"), ("0.75", "3/4"), ("$12.00", "12"),
                                  ("50%", "50"), ("-2", "-2.0"), ("\\boxed{\\dfrac{1}{2}}", "0.5"), ("x^{2}", "x^2")])
def test_equivalent_answers_normalise_alike(a, b):
    assert normalize_answer(a) == normalize_answer(b)


@pytest.mark.parametrize("a, b", [("12", "13"), ("1,2", "12"), ("3/4", "4/3"), ("x^2", "x^3")])
def test_different_answers_stay_different(a, b):
    assert normalize_answer(a) != normalize_answer(b)


def test_final_answer_extraction():
    assert final_answer("so 3 + 4 = 7. #### 7\nmore text 9") == "7"
    assert final_answer("thus \\boxed{\\frac{1}{2}} is it") == "\\frac{1}{2}"
    assert final_answer("3 apples and then 1,250 more") == "1,250"
    assert final_answer("no numbers") is None
    assert answers_match("1250", "3 apples and then 1,250 more")


def test_gsm8k_file(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    rows = [{"question": "Tom has 2 apples and buys 3. How many?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"},
            {"question": "A shop sells 1,000 pens a day. How many in 2 days?", "answer": "#### 2,000"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ps = load_gsm8k(path)
    problems = ps.problems(5)
    assert [p.answer for p in problems] == ["5", "2,000"]
    assert ps.verify(problems[1], "It is 2000.") and not ps.verify(problems[1], "It is 200.")
    assert get_problem_set(f"gsm8k:{path}").problems(1)[0].answer == "5"
    assert [p.answer for p in ps.problems(2, seed=1)] != [] and len(ps.problems(1)) == 1


def test_math_file(tmp_path):
    path = tmp_path / "math.jsonl"
    rows = [{"problem": "What is 1/2 + 1/4?", "solution": "We get $\\boxed{\\frac{3}{4}}$.", "level": "Level 1"},
            {"problem": "Simplify x*x.", "solution": "It is \\boxed{x^{2}}."},
            {"problem": "Given answer", "solution": "no box", "answer": "7"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    ps = load_math(path)
    problems = ps.problems(3)
    assert [p.answer for p in problems] == ["\\frac{3}{4}", "x^{2}", "7"]
    assert ps.verify(problems[0], "The answer is 0.75") and ps.verify(problems[1], "so \\boxed{x^2}")
    assert problems[0].meta["level"] == "Level 1"


@pytest.mark.parametrize("line, message", [
    ('{"question": "q", "answer": "no marker"}', "no '####'"),
    ('{"question": "q"}', "needs a non-empty string `answer`"),
    ("not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
])
def test_gsm8k_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok", "answer": "#### 1"}\n' + line + "\n")
    with pytest.raises(TaskError, match=message) as err:
        load_gsm8k(path).problems(2)
    assert "bad.jsonl:2" in str(err.value)


def test_math_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "p", "solution": "no box here"}\n')
    with pytest.raises(TaskError, match="boxed"):
        load_math(path).problems(1)
    with pytest.raises(TaskError, match="no such JSONL"):
        load_math(tmp_path / "missing.jsonl").problems(1)
    with pytest.raises(TaskError, match="unknown problem set"):
        get_problem_set("nonsense")
    with pytest.raises(TaskError, match="non-empty"):
        Problem("q", "")


def test_tasks_become_problem_sets():
    ps = get_problem_set("addition")
    assert isinstance(ps, TaskProblems)
    p = ps.problems(3, seed=1)[0]
    ex = Addition().examples(3, seed=1)[0]
    assert p.question == ex.clean and p.answer == ex.answer
    assert ps.verify(p, ex.answer) and not ps.verify(p, "0")
