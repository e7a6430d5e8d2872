"""generate() keeps its context: every cached decode step's logits equal a no-cache forward over the same tokens.

Comparing generated token ids is not enough: a tiny random model's greedy tokens barely depend on the context, so a
generate() that silently rebuilt its cache at every step (transformers 5.24 renamed the cache argument to
``cache=``) still produced the same tokens. These tests compare logits, on a model whose last logits are shown to
depend on the first token far beyond the tolerance.
"""
import logging

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from sambay_model import Phi4FlashCache, Phi4FlashConfig, Phi4FlashForCausalLM
from tests.sambay_model import batches

VOCAB = 128
PAD = 2
TOL = dict(rtol=1e-5, atol=1e-5)


def build(**overrides) -> Phi4FlashForCausalLM:
    values = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=2, sliding_window=8, bos_token_id=0, eos_token_id=1, pad_token_id=PAD,
                  compute_backend="torch")
    values.update(overrides)
    torch.manual_seed(0)
    return Phi4FlashForCausalLM(Phi4FlashConfig(**values)).eval()


class RecordScores(LogitsProcessor):
    """Keeps what generate() scored at each step: the sequences so far and the scores of their next token."""

    def __init__(self):
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps.append((input_ids.clone(), scores.clone()))
        return scores


def left_pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return batches.left_pad(seqs, pad_id=PAD)


def prompts(*lengths: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def assert_steps_match_no_cache_forward(model, recorder, prompt_mask, log_probs=False):
    """Each recorded step's scores == the last-position logits (or log-probs) of a no-cache forward."""
    assert len(recorder.steps) > 1
    rows = recorder.steps[0][0].shape[0]
    mask_rows = prompt_mask.repeat_interleave(rows // prompt_mask.shape[0], dim=0)
    for step, (seqs, scores) in enumerate(recorder.steps):
        new = seqs.shape[1] - mask_rows.shape[1]
        mask = torch.cat([mask_rows, torch.ones(rows, new, dtype=torch.long)], dim=1)
        with torch.no_grad():
            ref = model(seqs, attention_mask=mask, use_cache=False).logits[:, -1].float()
        if log_probs:
            ref = torch.log_softmax(ref, dim=-1)
        torch.testing.assert_close(scores, ref, **TOL, msg=lambda m: f"decode step {step}: {m}")


def test_the_model_logits_depend_on_early_context_far_beyond_the_tolerance():
    model = build()
    ids = torch.tensor(prompts(20))
    changed = ids.clone()
    changed[0, 0] = 3 + (int(ids[0, 0]) + 7) % (VOCAB - 3)
    with torch.no_grad():
        diff = (model(ids, use_cache=False).logits[0, -1] - model(changed, use_cache=False).logits[0, -1]).abs().max()
    assert diff > 1000 * TOL["atol"], f"last logits move only {diff:.2e} when the first token changes"


@pytest.mark.parametrize("lengths", [pytest.param((11,), id="single_row"), pytest.param((13, 1, 4, 9), id="left_padded")])
@pytest.mark.parametrize("backbone", ["sambay", "transformer"])
def test_greedy_decode_logits_equal_no_cache_forward(lengths, backbone):
    model = build(backbone=backbone)
    ids, mask = left_pad(prompts(*lengths))
    recorder = RecordScores()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=14, do_sample=False, pad_token_id=PAD,
                       eos_token_id=None, logits_processor=LogitsProcessorList([recorder]))
    assert_steps_match_no_cache_forward(model, recorder, mask)


def test_sampled_decode_logits_equal_no_cache_forward():
    model = build()
    ids, mask = left_pad(prompts(7, 12, 3))
    recorder = RecordScores()
    torch.manual_seed(5)
    with torch.no_grad():
        # No warpers (temperature 1, no top-k/p), so the recorder sees the raw logits the samples are drawn from.
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=True, temperature=1.0,
                       top_k=0, top_p=1.0, num_return_sequences=2, pad_token_id=PAD, eos_token_id=None,
                       logits_processor=LogitsProcessorList([recorder]))
    assert_steps_match_no_cache_forward(model, recorder, mask)


def test_beam_search_decode_log_probs_equal_no_cache_forward():
    model = build()
    ids, mask = left_pad(prompts(9, 3))
    recorder = RecordScores()
    with torch.no_grad():
        # Beam search hands the processors log-softmaxed scores of every (reordered) running beam.
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, num_beams=3, do_sample=False,
                       pad_token_id=PAD, eos_token_id=None, logits_processor=LogitsProcessorList([recorder]))
    assert_steps_match_no_cache_forward(model, recorder, mask, log_probs=True)


def test_batched_left_padded_generate_equals_per_row_generate_logits():
    model = build()
    seqs = prompts(13, 1, 5)
    ids, mask = left_pad(seqs)
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=PAD, eos_token_id=None,
                  output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        batched = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        for i, s in enumerate(seqs):
            alone = model.generate(input_ids=torch.tensor([s]), attention_mask=torch.ones(1, len(s), dtype=torch.long),
                                   **kwargs)
            assert batched.sequences[i, ids.shape[1]:].tolist() == alone.sequences[0, len(s):].tolist()
            torch.testing.assert_close(torch.stack([step[i] for step in batched.logits]),
                                       torch.stack([step[0] for step in alone.logits]), **TOL)


def test_right_padded_generate_is_a_clear_error():
    model = build()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, PAD, PAD]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with pytest.raises(ValueError, match=r"left-padded.*rows \[1\]"):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=PAD)


def test_forward_takes_the_cache_under_every_name_and_refuses_two():
    model = build()
    ids = torch.tensor(prompts(6))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        for name in ("cache", "past_key_values", "cache_params"):
            cache = Phi4FlashCache(model.config)
            model(ids[:, :5], use_cache=True, **{name: cache})
            assert cache.get_seq_length() == 5, name
            step = model(ids[:, 5:], use_cache=True, **{name: cache}).logits
            torch.testing.assert_close(step, full[:, 5:], **TOL)
        with pytest.raises(ValueError, match="different caches"):
            model(ids, cache=Phi4FlashCache(model.config), past_key_values=Phi4FlashCache(model.config))


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_generate_prints_no_deprecation_warning(recwarn):
    model = build()
    ids, mask = left_pad(prompts(6, 3))
    handler = _Collect()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=PAD,
                           eos_token_id=None)
    finally:
        logger.removeHandler(handler)
    said = handler.messages + [str(w.message) for w in recwarn]
    assert not [m for m in said if "deprecat" in m.lower()], said
