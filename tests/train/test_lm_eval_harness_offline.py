"""lm-evaluation-harness (``--model hf`` semantics) runs offline on a SambaY export with our local tasks."""
import json
from pathlib import Path

import lm_eval
import pytest
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

from tests.train.builders import build_harness_tiny


def test_local_task_files_use_absolute_paths(tmp_path):
    from train.lm_harness import PPL_TASK, REASONING_TASK, write_local_tasks

    data, _ = build_harness_tiny(tmp_path)
    tasks = write_local_tasks(data, tmp_path / "tasks")
    spec = json.loads((tasks / f"{REASONING_TASK}.yaml").read_text())
    path = Path(spec["dataset_kwargs"]["data_files"]["test"])
    assert path.is_absolute() and path.is_file()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["prompt"].endswith("\\boxed{answer}.")
    assert (tasks / f"{PPL_TASK}.yaml").is_file()


class _ScriptedLM(LM):
    """An lm-eval LM that answers from the document itself: runs the harness without any model."""

    def __init__(self, completion_of):
        super().__init__()
        self.completion_of = completion_of

    def generate_until(self, requests):
        return [self.completion_of(r.doc) for r in requests]

    def loglikelihood(self, requests):
        return [(-1.0, False) for _ in requests]

    def loglikelihood_rolling(self, requests):
        return [-float(len(r.args[0])) for r in requests]


def test_reasoning_task_grades_the_final_answer_of_math_grader(tmp_path):
    """The task's answers come from train.evals.math_grader.extract_answer: a ``####`` ending and nested braces
    count, a wrong answer does not (a ``\\boxed{([^{}]*)}`` regex would score 1/4 here, not 3/4)."""
    from data.jsonl import write_jsonl
    from data.layout import PreparedData
    from train.lm_harness import REASONING_TASK, FinalAnswerFilter, numeric_results, write_local_tasks

    data = PreparedData(tmp_path / "data")
    answers = {"q1": "12", "q2": "\\frac{1}{2}", "q3": "7", "q4": "5"}
    write_jsonl(data.reasoning("heldout"), [{"question": q, "answer": a} for q, a in answers.items()])
    completions = {"12": "so #### 12<|end|>", "\\frac{1}{2}": "half: \\boxed{\\frac{1}{2}}",
                   "7": "The answer is \\boxed{7}.", "5": "\\boxed{6}"}
    tasks = write_local_tasks(data.root, tmp_path / "tasks")
    results = lm_eval.simple_evaluate(model=_ScriptedLM(lambda doc: completions[doc["answer"]]),
                                      tasks=[REASONING_TASK], task_manager=TaskManager(include_path=str(tasks)),
                                      log_samples=False)
    assert numeric_results(results)[REASONING_TASK]["exact_match,boxed"] == pytest.approx(0.75)
    assert FinalAnswerFilter().apply([["#### 3", "none"]], [{}]) == [["3", ""]]


