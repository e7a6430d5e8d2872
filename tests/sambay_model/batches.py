"""Batch builders shared by the model tests (the decode and generate-logits tests)."""
import torch


def left_pad(seqs, pad_id):
    """Token lists left-padded to one width: (input_ids, attention_mask), as a tokenizer with left padding makes."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids, mask
