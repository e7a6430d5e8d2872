"""The sizes of every part of bench/gpu_check.py: the GPU run's, and the toy ones of ``--dry-run`` that send the
same code paths (the same entry points, the same model calls) through a CPU in seconds. One place for both."""
from __future__ import annotations

from dataclasses import dataclass, field

# Model overrides (Hydra ``model.*`` keys and Phi4FlashConfig keys alike) that shrink sambay_1b for the dry run.
TOY_MODEL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "sliding_window": 16}


@dataclass(frozen=True)
class Sizes:
    """What each part runs at. ``toy_model`` is empty on the GPU (the recipes' own widths)."""

    device: str
    toy_model: dict = field(default_factory=dict)
    # data: `python -m data.prepare --config-name demo` on a synthetic corpus
    tokenizer_kind: str = "phi4mini"  # the o200k Phi-4-mini tokenizer (vocab 200,064) of the real recipes
    bpe_vocab: int = 0  # tokenizer.vocab_size when tokenizer_kind is bpe
    corpus_chars: int = 6_000_000
    sft_examples: int = 4000
    preference_pairs: int = 200
    # pretrain: `train.pretrain --config-name sambay_1b`
    pretrain_seq: int = 4096
    pretrain_micro_rows: int = 4
    pretrain_batch_tokens: int = 32_768
    pretrain_steps: int = 8  # 4 windows of 2 steps: the first holds the compiles, the other 3 are measured
    pretrain_log_every: int = 2
    # sft: `train.sft --config-name phi4_mini_flash_reasoning`, one step of one row
    sft_seq: int = 32_768
    # dpo: `train.dpo --config-name gpu`
    dpo_steps: int = 3
    dpo_pairs_per_step: int = 4
    dpo_max_length: int = 512
    # kernel parts: sambay_1b's widths (d_inner = 2 x 2048, d_state 16, conv 4; 32 query / 8 KV heads of 64, window
    # 512). The parity length is odd and crosses 64- and 128-token chunk edges; the scan is timed at the pretrain
    # part's micro-batch (4 rows of 4096).
    kernel_shape: tuple[int, int, int, int] = (2, 4096, 2085, 16)  # batch, d_inner, time, d_state
    conv_kernel: int = 4
    scan_shape: tuple[int, int, int, int] = (4, 4096, 4096, 16)  # batch, d_inner, time, d_state
    flex_shape: tuple[int, ...] = (2, 32, 8, 2048, 64, 512)  # batch, heads, KV heads, time, head_dim, window
    decode_context: int = 32_768
    decode_steps: int = 32
    decode_vocab: int = 200_064
    copy_mib: int = 2048
    matmul_n: int = 8192


def sizes(dry_run: bool) -> Sizes:
    if not dry_run:
        return Sizes(device="cuda")
    return Sizes(device="cpu", toy_model=dict(TOY_MODEL), tokenizer_kind="bpe", bpe_vocab=512, corpus_chars=300_000,
                 sft_examples=300, preference_pairs=24, pretrain_seq=64, pretrain_micro_rows=2,
                 pretrain_batch_tokens=256, pretrain_steps=4, pretrain_log_every=2, sft_seq=512, dpo_steps=2,
                 dpo_pairs_per_step=2, dpo_max_length=160, kernel_shape=(1, 8, 70, 4), scan_shape=(1, 8, 24, 4),
                 flex_shape=(1, 4, 2, 32, 16, 8), decode_context=256, decode_steps=3, decode_vocab=256, copy_mib=8,
                 matmul_n=128)
