"""Typed schema of ``train.evaluate`` recipes (registered as ``evaluate_schema``; unknown keys are errors)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore

from data.layout import DEFAULT_DATA_DIR
from data.reasoning import PROMPT_TEMPLATE
from train.evals.math_accuracy import check_prompt_template
from train.evals.math_grader import DEFAULT_ANSWER_FORMATS, AnswerFormat, parse_answer_formats
from train.evals.perplexity import PerplexityConfig
from train.evals.retrieval import RetrievalConfig
from train.evals.generation import SamplingConfig

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")


@dataclass
class MathEvalConfig:
    """Math reasoning accuracy on held-out problem templates.

    enabled: run it (default True).
    problems: reasoning JSONL (default ``None`` = the held-out split of ``data_dir``,
        ``data.layout.PreparedData(data_dir).reasoning("heldout")``).
    limit: first N problems; 0 = all (default 100).
    sampling: k, temperature, top-p, token budget, batch size (default: greedy, k=1, 96 new tokens, batch 32).
    prompt_template: the user message, a ``str.format`` template whose one placeholder is ``{question}`` (literal
        braces doubled); rendered in the tokenizer's chat template (default ``data.reasoning.PROMPT_TEMPLATE``,
        the prompt the demo's SFT data uses: ``{question}\\nSolve step by step and end with \\boxed{{answer}}.``).
        Any other placeholder, or none, is an error.
    answer_formats: where the final answer is read, an ordered list of ``boxed`` (last ``\\boxed{}``), ``hash``
        (after the last ``####``), ``answer_is`` ("The answer is N." / "answer: N", any case) and ``last_number``
        (the last plain number); the first format whose marker occurs decides (default ``[boxed, hash]``).
    """

    enabled: bool = True
    problems: Optional[str] = None
    limit: int = 100
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompt_template: str = PROMPT_TEMPLATE
    answer_formats: List[AnswerFormat] = field(default_factory=lambda: list(DEFAULT_ANSWER_FORMATS))

    def __post_init__(self) -> None:
        check_prompt_template(self.prompt_template, "math.prompt_template")
        # Python callers may pass names; Hydra has already turned them into AnswerFormats.
        self.answer_formats = parse_answer_formats(self.answer_formats, "math.answer_formats")


@dataclass
class EvalConfig:
    """Schema of ``train.evaluate``.

    model_path: HF export directory to evaluate (default ``None``; required unless ``score_file`` is set).
    score_file: JSONL of ``{completion, answer}`` to score without a model (default ``None``).
    data_dir: output of ``data.prepare`` (default ``data.layout.DEFAULT_DATA_DIR``, ``artifacts/data/demo``).
    output_dir: where ``eval.json`` / ``samples.jsonl`` go (default ``None`` = ``<model_path>/../eval``; in
        score-file mode nothing is written unless set).
    overwrite: replace an existing ``eval.json`` (default False: an existing one is an error).
    device: ``auto`` (default: cuda when available, else cpu), ``cpu``, ``cuda``.
    dtype: model dtype, ``float32`` (default) or ``bfloat16``.
    check_tokenizer: require the export's tokenizer fingerprint to equal ``<data_dir>/tokenizer``'s
        (default True).
    math, perplexity, retrieval: the three evaluations (all enabled by default).
    dry_run: build and check everything (config, the model on the meta device, tokenizer, the data the enabled
        evaluations read, the output path), print ``{"dry_run": {...}}`` and write nothing (default False).
    """

    model_path: Optional[str] = None
    score_file: Optional[str] = None
    data_dir: str = DEFAULT_DATA_DIR
    output_dir: Optional[str] = None
    overwrite: bool = False
    device: str = "auto"
    dtype: str = "float32"
    check_tokenizer: bool = True
    math: MathEvalConfig = field(default_factory=MathEvalConfig)
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")


def register_evaluate_schema() -> None:
    """Register :class:`EvalConfig` with Hydra's ConfigStore as ``evaluate_schema`` (idempotent)."""
    ConfigStore.instance().store(name="evaluate_schema", node=EvalConfig)
