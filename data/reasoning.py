"""Step-by-step arithmetic word problems with train / held-out *templates*.

Each family is one skill (e.g. "buy some, then give some away"); its templates are different phrasings of the
same question. Held-out templates are never used for training data, so evaluating on them measures transfer
to new wordings of known skills rather than memorised text. The held-out phrasings recombine clauses that
occur in the family's training phrasings into sentences never seen whole, rather than introducing new verbs a
model of a few million parameters has no way to learn in minutes. Operands are small (mostly one digit) so
that the arithmetic itself is within reach of the CPU demo; the price is few distinct answers per family, so
report accuracy next to ``train.evals.math_accuracy.blind_baseline_accuracy`` (what guessing the family's commonest
answer scores). Solutions are short chains of thought that end with ``The answer is \\boxed{N}.``. For
real-scale data, :func:`generate_gsm_symbolic` splits reasoning_gym's GSM-Symbolic problems on template ids the
same way.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

Step = tuple[str, str, int]  # (sentence before the equation, expression, result)

NAMES = [("Tom", "he"), ("Anna", "she"), ("Ben", "he"), ("Lucy", "she"), ("Sam", "he"), ("Mia", "she"),
         ("Leo", "he"), ("Zoe", "she"), ("Max", "he"), ("Emma", "she"), ("Jack", "he"), ("Lily", "she")]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "eggs"]


@dataclass(frozen=True)
class Family:
    """One skill: how to draw numbers, how to solve step by step, and its question phrasings.

    ``steps(v, err)`` returns the solution steps; ``err=(k, delta)`` adds ``delta`` to step ``k``'s result and
    carries the wrong value forward (used to build plausible wrong solutions for preference pairs).
    ``held_out`` is the number of phrasings (taken from the end of ``templates``) reserved for evaluation.
    """

    name: str
    draw: Callable[[random.Random], dict]
    steps: Callable[[dict, tuple[int, int] | None], list[Step]]
    templates: tuple[str, ...]
    held_out: int = 2


def _chain(parts: list[tuple[str, Callable[..., tuple[str, int]]]], err: tuple[int, int] | None) -> list[Step]:
    """Run step functions in order; each gets the previous (possibly corrupted) results."""
    out: list[Step] = []
    results: list[int] = []
    for k, (text, fn) in enumerate(parts):
        expr, value = fn(*results)
        if err is not None and err[0] == k:
            value += err[1]
        results.append(value)
        out.append((text, expr, value))
    return out


def _buy_give(rng):
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return {"a": a, "b": b, "c": rng.randint(1, a + b - 1)}


def _buy_give_steps(v, err=None):
    return _chain([(f"{v['name']} starts with {v['a']} {v['item']} and gets {v['b']} more",
                    lambda: (f"{v['a']} + {v['b']}", v["a"] + v["b"])),
                   (f"Then {v['pron']} gives away {v['c']}", lambda s: (f"{s} - {v['c']}", s - v["c"]))], err)


def _boxes(rng):
    return {"a": rng.randint(2, 5), "b": rng.randint(2, 5), "c": rng.randint(1, 9)}


def _boxes_steps(v, err=None):
    return _chain([(f"{v['a']} boxes with {v['b']} {v['item']} each make",
                    lambda: (f"{v['a']} * {v['b']}", v["a"] * v["b"])),
                   (f"Adding the {v['c']} loose {v['item']} gives", lambda s: (f"{s} + {v['c']}", s + v["c"]))], err)


def _spend(rng):
    b, c = rng.randint(2, 4), rng.randint(2, 5)
    return {"a": b * c + rng.randint(0, 9), "b": b, "c": c}


def _spend_steps(v, err=None):
    return _chain([(f"{v['b']} {v['item']} at {v['c']} dollars each cost",
                    lambda: (f"{v['b']} * {v['c']}", v["b"] * v["c"])),
                   (f"{v['name']} had {v['a']} dollars, so {v['pron']} has left",
                    lambda s: (f"{v['a']} - {s}", v["a"] - s))], err)


def _more_than(rng):
    return {"a": rng.randint(1, 9), "b": rng.randint(1, 9)}


def _more_than_steps(v, err=None):
    return _chain([(f"{v['other']} has {v['b']} more than {v['name']}",
                    lambda: (f"{v['a']} + {v['b']}", v["a"] + v["b"])),
                   ("Together they have", lambda s: (f"{v['a']} + {s}", v["a"] + s))], err)


def _days(rng):
    return {"a": rng.randint(1, 9), "b": rng.randint(1, 9)}


def _days_steps(v, err=None):
    return _chain([("On the third day it is twice the first day", lambda: (f"2 * {v['a']}", 2 * v["a"])),
                   ("The first two days give", lambda s: (f"{v['a']} + {v['b']}", v["a"] + v["b"])),
                   ("In total", lambda s, t: (f"{t} + {s}", t + s))], err)


def _share(rng):
    b, q = rng.randint(2, 4), rng.randint(2, 5)
    return {"a": b * q, "b": b, "c": rng.randint(1, q)}


def _share_steps(v, err=None):
    return _chain([(f"Sharing {v['a']} {v['item']} among {v['b']} friends gives each",
                    lambda: (f"{v['a']} / {v['b']}", v["a"] // v["b"])),
                   (f"After using {v['c']}, each friend has", lambda s: (f"{s} - {v['c']}", s - v["c"]))], err)


FAMILIES: tuple[Family, ...] = (
    Family("buy_give", _buy_give, _buy_give_steps, (
        "{name} has {a} {item}. {Pron} gets {b} more and then gives away {c}. How many {item} does {name} have now?",
        "{name} had {a} {item}, bought {b} more, then gave {c} to a friend. How many {item} are left?",
        "There are {a} {item} in {name}'s bag. {name} adds {b} and later gives {c} away. How many {item} remain?",
        "{name} owns {a} {item}. After getting {b} more {item}, {pron} gives {c} away. How many does {pron} have?",
        "Start with {a} {item}. {name} receives {b} more and hands out {c}. How many {item} does {name} keep?",
        "{name} owns {a} {item}, gets {b} more, then gives {c} to a friend. How many {item} remain?",
        "There are {a} {item} in {name}'s bag. {Pron} receives {b} more and gives away {c}. How many {item} are left?",
    )),
    Family("boxes", _boxes, _boxes_steps, (
        "{name} has {a} boxes with {b} {item} in each box and {c} loose {item}. How many {item} in all?",
        "There are {a} bags of {b} {item} each, plus {c} extra {item}. How many {item} does {name} have?",
        "{name} buys {a} packs of {b} {item} and already had {c}. How many {item} does {name} have now?",
        "{a} boxes hold {b} {item} each. {name} also has {c} more {item}. What is the total number of {item}?",
        "{name} fills {a} jars with {b} {item} each and keeps {c} {item} aside. How many {item} are there?",
        "{name} has {a} bags with {b} {item} in each bag, plus {c} extra {item}. What is the total number of {item}?",
        "{a} jars hold {b} {item} each, and {name} already had {c}. How many {item} in all?",
    )),
    Family("spend", _spend, _spend_steps, (
        "{name} has {a} dollars and buys {b} {item} that cost {c} dollars each. How much money is left?",
        "{name} spends money on {b} {item} at {c} dollars each. {Pron} started with {a} dollars. How many dollars remain?",
        "With {a} dollars, {name} buys {b} {item} priced at {c} dollars each. How many dollars does {name} keep?",
        "{b} {item} cost {c} dollars each. {name} pays with {a} dollars. How much change does {name} get?",
        "{name} saved {a} dollars and then bought {b} {item} for {c} dollars apiece. How much is left?",
        "{name} saved {a} dollars and buys {b} {item} priced at {c} dollars each. How many dollars remain?",
        "With {a} dollars, {name} bought {b} {item} that cost {c} dollars each. How much money is left?",
    )),
    Family("more_than", _more_than, _more_than_steps, (
        "{name} has {a} {item}. {other} has {b} more {item} than {name}. How many {item} do they have together?",
        "{other} owns {b} more {item} than {name}, who owns {a}. How many {item} do they own in total?",
        "{name} picked {a} {item}, and {other} picked {b} more than {name}. How many {item} did both pick?",
        "If {name} has {a} {item} and {other} has {b} more, how many {item} do the two have altogether?",
        "{name} counts {a} {item}. {other} counts {b} more than that. What is their combined count?",
        "{name} owns {a} {item}. {other} owns {b} more than {name}. How many {item} do the two have altogether?",
        "{name} picked {a} {item}, and {other} has {b} more {item} than {name}. How many {item} do they have in total?",
    )),
    Family("days", _days, _days_steps, (
        "{name} reads {a} pages on Monday, {b} pages on Tuesday and twice Monday's pages on Wednesday. How many pages in total?",
        "{name} walks {a} km on day one, {b} km on day two and double the first day on day three. How many km in all?",
        "{name} sold {a} {item} on Friday, {b} on Saturday and twice Friday's amount on Sunday. How many {item} were sold?",
        "On day 1 {name} writes {a} lines, on day 2 {b} lines, and on day 3 twice as many as day 1. Total lines?",
        "{name} plants {a} trees first, then {b} trees, then two times the first number. How many trees altogether?",
        "{name} swims {a} laps on Monday, {b} laps on Tuesday and twice Monday's laps on Wednesday. How many laps in total?",
        "{name} saves {a} dollars on day one, {b} dollars on day two and double the first day on day three. How many dollars in all?",
    )),
    Family("share", _share, _share_steps, (
        "{name} shares {a} {item} equally among {b} friends. Each friend uses {c}. How many {item} does each friend have left?",
        "{a} {item} are split evenly between {b} children, and each child gives away {c}. How many does each child keep?",
        "{name} divides {a} {item} into {b} equal groups and removes {c} from each group. How many are in each group now?",
        "There are {a} {item} for {b} friends, shared equally. Each friend loses {c}. How many {item} does each have?",
        "{b} friends share {a} {item} equally, then each eats {c}. How many {item} does each friend have left?",
        "{name} divides {a} {item} equally among {b} friends. Each friend eats {c}. How many {item} does each friend have left?",
        "{a} {item} are split evenly between {b} friends, and each friend uses {c}. How many {item} does each friend keep?",
    )),
)
FAMILY_NAMES = tuple(f.name for f in FAMILIES)
SPLITS = ("train", "heldout")


# The user message of a reasoning problem, a ``str.format`` template of ``{question}`` (literal braces doubled);
# the default of ``train.evaluate``'s ``math.prompt_template``.
PROMPT_TEMPLATE = "{question}\nSolve step by step and end with \\boxed{{answer}}."


def format_prompt(question: str) -> str:
    """The user message for a reasoning problem (shared by SFT data, preference data and evaluation)."""
    return PROMPT_TEMPLATE.format(question=question)


def template_ids(split: str, families: Sequence[str] | None = None) -> list[str]:
    """``family/k`` ids of the templates in ``split`` ("train" or "heldout")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    out = []
    for fam in _select(families):
        n_train = len(fam.templates) - fam.held_out
        ks = range(n_train) if split == "train" else range(n_train, len(fam.templates))
        out += [f"{fam.name}/{k}" for k in ks]
    return out


def _select(families: Sequence[str] | None) -> list[Family]:
    if not families:
        return list(FAMILIES)
    unknown = sorted(set(families) - set(FAMILY_NAMES))
    if unknown:
        raise ValueError(f"unknown reasoning families {unknown}; known: {list(FAMILY_NAMES)}")
    return [f for f in FAMILIES if f.name in families]


def _family(name: str) -> Family:
    return next(f for f in FAMILIES if f.name == name)


def render_solution(steps: list[Step]) -> str:
    """``Sentence: a + b = c.`` per step, then the boxed final answer."""
    body = " ".join(f"{text}: {expr} = {value}." for text, expr, value in steps)
    return f"{body} The answer is \\boxed{{{steps[-1][2]}}}."


def _values(fam: Family, rng: random.Random) -> dict:
    (name, pron), (other, _) = rng.sample(NAMES, 2)
    return {**fam.draw(rng), "name": name, "pron": pron, "Pron": pron.capitalize(), "other": other,
            "item": rng.choice(ITEMS)}


def generate_problems(n: int, split: str, seed: int = 0, families: Sequence[str] | None = None) -> list[dict]:
    """``n`` problems from ``split``'s templates: ``{id, template_id, question, solution, answer}``.

    Deterministic given (n, split, seed, families). Questions are unique within the call (retries on repeats).
    """
    return [{k: v for k, v in r.items() if k != "values"} for r in generate_problems_with_values(n, split, seed, families)]


def corrupt_solution(record: dict, rng: random.Random) -> str:
    """A plausible wrong solution: one arithmetic step off (carried forward) or only the final answer wrong.

    Procedural records are re-solved with an injected error; other records (e.g. GSM-Symbolic) get their final
    ``\\boxed{}`` value and its last occurrence in the text changed.
    """
    answer = str(record["answer"])
    tid = str(record.get("template_id", ""))
    fam_name = tid.split("/")[0]
    delta = rng.choice([-3, -2, -1, 1, 2, 3, 10])
    if fam_name in FAMILY_NAMES and "values" in record:
        fam = _family(fam_name)
        n_steps = len(fam.steps(record["values"], None))
        return render_solution(fam.steps(record["values"], (rng.randrange(n_steps), delta)))
    text = record["solution"]
    wrong = _shift_number(answer, delta)
    if wrong == answer:
        wrong = answer + "1"
    boxed = f"\\boxed{{{answer}}}"
    if boxed not in text:
        raise ValueError(f"record {record.get('id')}: solution has no \\boxed{{{answer}}} to corrupt")
    head, tail = text.rsplit(boxed, 1)
    # Also change the last line that computed the answer, so the error is in the reasoning, not only the box.
    m = list(re.finditer(rf"(?<![\d.]){re.escape(answer)}(?![\d.])", head))
    if m and rng.random() < 0.5:
        last = m[-1]
        head = head[:last.start()] + wrong + head[last.end():]
    return head + f"\\boxed{{{wrong}}}" + tail


def _shift_number(s: str, delta: int) -> str:
    try:
        x = float(s.replace(",", ""))
    except ValueError:
        return s + "0"
    y = x + delta
    return str(int(y)) if y == int(y) else str(y)


def generate_problems_with_values(n: int, split: str, seed: int = 0, families: Sequence[str] | None = None) -> list[dict]:
    """Like :func:`generate_problems` but each record keeps ``values`` (needed by :func:`corrupt_solution`
    to inject step errors)."""
    ids = template_ids(split, families)
    rng = random.Random(f"{seed}/{split}")
    out, seen, attempts = [], set(), 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not draw {n} distinct problems from {len(ids)} templates")
        tid = rng.choice(ids)
        fam_name, k = tid.split("/")
        fam = _family(fam_name)
        v = _values(fam, rng)
        question = fam.templates[int(k)].format(**v)
        if question in seen:
            continue
        seen.add(question)
        steps = fam.steps(v, None)
        out.append({"id": f"{split}-{seed}-{len(out)}", "template_id": tid, "question": question,
                    "solution": render_solution(steps), "answer": str(steps[-1][2]), "values": v})
    return out


# ---- answers ---------------------------------------------------------------------------------------------------
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` in ``text`` (nested braces allowed), or None."""
    for start in reversed([m.end() for m in _BOX_RE.finditer(text)]):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
        # An unclosed box (truncated generation) is skipped in favour of an earlier complete one.
    return None


def normalize_answer(ans: str) -> str:
    """``24.0`` -> ``24``, ``1,000`` -> ``1000``; non-numbers are stripped of spaces and a trailing period."""
    s = ans.strip().rstrip(".").replace(",", "").replace("$", "").strip()
    try:
        x = float(s)
    except ValueError:
        return s
    return str(int(x)) if x == int(x) else repr(x)


# ---- GSM-Symbolic (reasoning_gym) ------------------------------------------------------------------------------
def generate_gsm_symbolic(n: int, split: str, seed: int = 0, heldout_fraction: float = 0.2) -> list[dict]:
    """``n`` GSM-Symbolic problems from reasoning_gym whose template ids fall in ``split``.

    Templates are assigned to train / held-out by a fixed seeded shuffle of the template ids (independent of
    ``seed``), so every call agrees on the split. The ``#### N`` CoT ending becomes ``The answer is \\boxed{N}.``.
    Note the templates derive from GSM8K *test* problems: report held-out-template accuracy, not GSM8K test.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    # Local: reasoning_gym takes seconds to import and only this source needs it, while data.reasoning is imported
    # by training and evaluation (train.evals.math_grader, train.evals.math_accuracy).
    import reasoning_gym
    from reasoning_gym.arithmetic.gsm_symbolic.gsm_symbolic import tasks_ok  # every working template id

    tids = sorted(int(t) for t in tasks_ok)
    order = random.Random(12345).sample(tids, len(tids))
    heldout = set(order[: max(1, round(heldout_fraction * len(order)))])
    out, seen, size = [], set(), max(4 * n, 100)
    for attempt in range(6):
        ds = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed * 1000 + attempt)
        for i in range(len(ds)):
            tid = int(ds.task_indices[i])
            if (tid in heldout) != (split == "heldout"):
                continue
            x = ds[i]
            if x["question"] in seen:
                continue
            seen.add(x["question"])
            answer = normalize_answer(str(x["answer"]))
            cot = x["metadata"]["answer_cot"].split("####")[0].strip()
            out.append({"id": f"gsm-{split}-{seed}-{len(out)}", "template_id": f"gsm_symbolic/{tid}",
                        "question": x["question"], "solution": f"{cot}\nThe answer is \\boxed{{{answer}}}.",
                        "answer": answer})
            if len(out) == n:
                return out
    raise ValueError(f"could not draw {n} distinct gsm_symbolic problems for split {split!r}")
