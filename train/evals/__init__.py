"""The evaluation suite behind ``train.evaluate``, ``train.report`` and the pipeline's gates: sampling
(``generation``), answer grading (``math_grader``), math accuracy, perplexity, long-context retrieval, quality
gates, and the ``evaluate`` schema (``evaluate_config``).

Layer: imports ``train.runtime`` and ``train.config``; the engine and DPO build on it.
"""
