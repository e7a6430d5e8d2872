"""Cached decoding, linear prefill, left-padded batched generation and cache size of the SambaY model."""
import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import sambay_model  # noqa: F401  (registers the Auto classes)
from sambay_model import Phi4FlashCache, Phi4FlashConfig, Phi4FlashForCausalLM
from tests.sambay_model.batches import left_pad

VOCAB = 128


def tiny_config(**overrides) -> Phi4FlashConfig:
    values = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=2, sliding_window=8, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                  compute_backend="torch")
    values.update(overrides)
    return Phi4FlashConfig(**values)


def build(seed=0, dtype=torch.float32, **overrides) -> Phi4FlashForCausalLM:
    torch.manual_seed(seed)
    return Phi4FlashForCausalLM(tiny_config(**overrides)).to(dtype).eval()


VARIANTS = [
    pytest.param({}, id="sambay"),
    pytest.param({"use_gmu": False}, id="samba_yoco"),
    pytest.param({"use_diff_attn": False}, id="no_diff_attn"),
    pytest.param({"backbone": "transformer"}, id="transformer"),
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_stepwise_decode_matches_full_forward_past_the_window(overrides):
    model = build(**overrides)
    ids = torch.randint(3, VOCAB, (2, 40))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = Phi4FlashCache(model.config)
        prompt = 5
        steps = [model(ids[:, :prompt], past_key_values=cache, use_cache=True).logits]
        for t in range(prompt, ids.shape[1]):
            out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
    stepped = torch.cat(steps, dim=1)
    assert cache.get_seq_length() == 40
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("last_doc", [1, 2, 5])
def test_decode_after_a_packed_prefill_stays_in_the_last_document(last_doc):
    """The conv state a packed prefill leaves holds nothing of earlier documents, even when the last document is
    shorter than the conv (d_conv - 1 = 3 cached inputs): decoding continues the last document alone."""
    model = build()
    ids = torch.randint(3, VOCAB, (2, 20))
    docs = torch.zeros(2, 20, dtype=torch.long)
    docs[:, 6:] = 1
    docs[:, 20 - last_doc:] = 2
    nxt = torch.randint(3, VOCAB, (2, 1))
    with torch.no_grad():
        full = model(torch.cat([ids, nxt], 1), doc_ids=torch.cat([docs, docs[:, -1:]], 1), use_cache=False).logits
        cache = Phi4FlashCache(model.config)
        model(ids, doc_ids=docs, past_key_values=cache, use_cache=True)
        step = model(nxt, past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(step[:, -1], full[:, -1], rtol=1e-5, atol=1e-5)


def test_chunked_prefill_matches_full_forward():
    model = build()
    ids = torch.randint(3, VOCAB, (2, 30))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = Phi4FlashCache(model.config)
        a = model(ids[:, :11], past_key_values=cache, use_cache=True).logits
        b = model(ids[:, 11:], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([a, b], dim=1), full, rtol=1e-5, atol=1e-5)


def test_linear_prefill_runs_cross_decoder_on_last_position_only():
    model = build()
    ids = torch.randint(3, VOCAB, (2, 24))
    seen_lengths = {}

    def record(module, args, kwargs, output):
        seen_lengths[module.layer_idx] = output[0].shape[1]

    hooks = [layer.register_forward_hook(record, with_kwargs=True) for layer in model.model.layers]
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = Phi4FlashCache(model.config)
        last = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        for h in hooks:
            h.remove()
        # The shared K,V of layer L/2+1 hold every prompt token.
        assert cache.key_cache[5].shape[2] == 24
        nxt = torch.randint(3, VOCAB, (2, 1))
        step = model(nxt, past_key_values=cache, use_cache=True).logits
        ref_step = model(torch.cat([ids, nxt], 1), use_cache=False).logits[:, -1:]
    # Layers 0..L/2 see every token; from the full-attention layer (L/2+1) on, only the last position is computed.
    assert seen_lengths == {0: 24, 1: 24, 2: 24, 3: 24, 4: 24, 5: 1, 6: 1, 7: 1}
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step, ref_step, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [VARIANTS[0], VARIANTS[3]])
def test_batched_left_padded_greedy_generate_equals_per_sequence(overrides):
    model = build(**overrides)
    g = torch.Generator().manual_seed(1)
    # Lengths straddle the conv width (4) and the window (8); the shortest prompt is a single token.
    seqs = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (13, 1, 3, 9)]
    ids, mask = left_pad(seqs, pad_id=2)
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=2, eos_token_id=None)
    with torch.no_grad():
        batched = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        for i, s in enumerate(seqs):
            alone = model.generate(input_ids=torch.tensor([s]), attention_mask=torch.ones(1, len(s), dtype=torch.long),
                                   **kwargs)
            assert batched[i, ids.shape[1]:].tolist() == alone[0, len(s):].tolist(), f"sequence {i} differs"


def test_left_padded_logits_equal_unpadded_and_pads_do_not_leak():
    model = build()
    seq = torch.randint(3, VOCAB, (1, 6))
    with torch.no_grad():
        ref = model(seq, use_cache=False).logits
        for pad_token in (2, 77):  # the pad content must not matter
            ids = torch.cat([torch.full((1, 5), pad_token), seq], 1)
            mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], 1)
            cache = Phi4FlashCache(model.config)
            out = model(ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits[:, 5:]
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            nxt = torch.tensor([[9]])
            step = model(nxt, attention_mask=torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], 1),
                         past_key_values=cache, use_cache=True).logits
            ref_step = model(torch.cat([seq, nxt], 1), use_cache=False).logits[:, -1:]
            torch.testing.assert_close(step, ref_step, rtol=1e-5, atol=1e-5)


def test_sampled_generate_is_seeded_and_batched():
    model = build()
    ids, mask = left_pad([[5, 6, 7, 8, 9], [10, 11]], pad_id=2)
    kwargs = dict(max_new_tokens=6, do_sample=True, top_k=20, temperature=0.9, pad_token_id=2, eos_token_id=None)
    torch.manual_seed(3)
    a = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    torch.manual_seed(3)
    b = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert a.shape == (2, 11)
    assert torch.equal(a, b)
    assert int(a.max()) < VOCAB and int(a.min()) >= 0


def theoretical_cache_bytes(cfg: Phi4FlashConfig, batch: int, tokens: int, elem: int) -> int:
    """docs/architecture.md §9.1: Mamba conv (d_conv - 1 raw inputs) + SSM state; SWA K,V of min(window, tokens);
    one full K,V."""
    L, d_inner, n = cfg.num_hidden_layers, cfg.mamba_expand * cfg.hidden_size, cfg.mamba_d_state
    kv_per_token = 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    n_mamba = L // 4 + 1  # even layers up to and including L/2
    n_swa = L // 4  # odd layers below L/2
    mamba = n_mamba * d_inner * ((cfg.mamba_d_conv - 1) + n)
    swa = n_swa * kv_per_token * min(cfg.sliding_window[1], tokens)
    full = kv_per_token * tokens
    return batch * (mamba + swa + full) * elem


@pytest.mark.parametrize("tokens", [3, 8, 29])
def test_cache_bytes_match_theory(tokens):
    model = build()
    cache = Phi4FlashCache(model.config)
    with torch.no_grad():
        model(torch.randint(3, VOCAB, (2, tokens - 1)), past_key_values=cache, use_cache=True)
        model(torch.randint(3, VOCAB, (2, 1)), past_key_values=cache, use_cache=True)
    assert cache.nbytes() == theoretical_cache_bytes(model.config, 2, tokens, 4)
    # Only the full-attention layer (5) and the SWA layers (1, 3) store K,V; cross layers store nothing.
    assert sorted(cache.key_cache) == [1, 3, 5]
    assert sorted(cache.ssm_states) == [0, 2, 4]


def test_transformer_baseline_cache_grows_in_every_layer():
    model = build(backbone="transformer")
    cache = Phi4FlashCache(model.config)
    with torch.no_grad():
        model(torch.randint(3, VOCAB, (1, 10)), past_key_values=cache, use_cache=True)
    cfg = model.config
    kv_per_token = 2 * cfg.num_key_value_heads * cfg.head_dim
    assert cache.nbytes() == cfg.num_hidden_layers * kv_per_token * 10 * 4


def test_beam_search_with_cache_equals_beam_search_without():
    model = build()
    ids, mask = left_pad([[5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22]], pad_id=2)
    kwargs = dict(max_new_tokens=10, num_beams=3, do_sample=False, pad_token_id=2, eos_token_id=None)
    with torch.no_grad():
        cached = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **kwargs)
        uncached = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_cuda_backend_without_kernels_is_a_clear_error():
    model = build(compute_backend="cuda")
    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only error path")
    with pytest.raises(RuntimeError, match="compute_backend='cuda'"):
        model(torch.randint(3, VOCAB, (1, 4)))


def test_cache_allocation_covers_used_state_and_decode_writes_in_place():
    model = build()
    cache = Phi4FlashCache(model.config)
    with torch.no_grad():
        model(torch.randint(3, VOCAB, (2, 29)), past_key_values=cache, use_cache=True)
        full_buffer = cache._keys[5].data
        model(torch.randint(3, VOCAB, (2, 1)), past_key_values=cache, use_cache=True)
    # The used part is the theory's state; the buffers hold more (headroom), never less.
    assert cache.nbytes() == theoretical_cache_bytes(model.config, 2, 30, 4)
    assert cache.nbytes_allocated() > cache.nbytes()
    # The step wrote into the full-attention buffer allocated by the prefill instead of concatenating a new one.
    assert cache._keys[5].data is full_buffer and cache.key_cache[5].shape[2] == 30


def _ops_output_sizes(fn) -> list[tuple[str, int]]:
    """(op, numel) of every freshly allocated tensor an eager call produces (views share an input's storage)."""
    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                      if isinstance(t, torch.Tensor)}
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                    self.sizes.append((str(func), t.numel()))
            return out

    with Record() as rec:
        fn()
    return rec.sizes


@pytest.mark.parametrize("overrides", VARIANTS)
def test_decode_step_copies_no_kv_sized_tensor(overrides):
    """A decode step reads the cached K,V in place: no op makes a tensor as large as one head's cached keys
    (a torch.cat of the cache, a .contiguous() of K/V, GQA's repeated K,V, the [V1|V2] concatenation)."""
    model = build(**overrides)
    cfg = model.config
    past = 300
    cache = Phi4FlashCache(cfg)
    with torch.no_grad():
        model(torch.randint(3, VOCAB, (1, past)), past_key_values=cache, use_cache=True, logits_to_keep=1)
        model(torch.randint(3, VOCAB, (1, 1)), past_key_values=cache, use_cache=True)  # capacity already there
        sizes = _ops_output_sizes(lambda: model(torch.randint(3, VOCAB, (1, 1)), past_key_values=cache,
                                                use_cache=True))
    limit = past * cfg.head_dim  # one kv head's keys; the attention scores are [Hq, past] < this
    big = [(op, n) for op, n in sizes if n >= limit]
    assert not big, big


def test_decode_reads_the_padding_plan_of_cached_tokens_from_the_cache():
    """The segment plan of the prompt is built once by the prefill; later steps read only the new mask columns."""
    model = build()
    ids, mask = left_pad([[5, 6, 7, 8, 9, 10], [11, 12]], pad_id=2)
    nxt = torch.tensor([[20], [21]])
    outs = []
    with torch.no_grad():
        for step_mask_past in (mask, torch.ones_like(mask)):
            cache = Phi4FlashCache(model.config)
            model(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
            assert cache.segments().shape == (2, 6)
            step_mask = torch.cat([step_mask_past, torch.ones(2, 1, dtype=torch.long)], 1)
            outs.append(model(nxt, attention_mask=step_mask, past_key_values=cache, use_cache=True).logits)
            assert cache.segments().shape == (2, 7)
        ref = model(torch.tensor([[11, 12, 21]]), use_cache=False).logits[:, -1:]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(outs[0][1:], ref, rtol=1e-5, atol=1e-5)
