"""Long-context retrieval probe: phonebook lookup at several context lengths (as in the SambaY paper).

Each example is a synthetic phonebook (``<name>: <number>`` lines) filled to about ``length`` tokens,
followed by a query for one entry placed at a random depth. The answer is scored with one teacher-forced
forward pass: ``accuracy`` counts examples where the model's greedy prediction matches every token of the
number (identical to greedy decoding of that many tokens), and ``answer_logprob`` is the mean log-probability
per answer token, which still moves for models too small to get exact matches.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from train.runtime.model_mode import eval_mode

_FIRST = ["Ada", "Bruno", "Chen", "Dara", "Elif", "Femi", "Gita", "Hugo", "Iris", "Jonas", "Kira", "Luca", "Mira",
          "Nils", "Omar", "Pia", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Vik", "Wren", "Yara", "Zeno"]
_LAST = ["Abbott", "Baker", "Costa", "Diaz", "Evans", "Fischer", "Garcia", "Haas", "Ito", "Jensen", "Khan", "Lopez",
         "Moreau", "Novak", "Olsen", "Petrov", "Quist", "Rossi", "Silva", "Tanaka", "Ueda", "Vance", "Weber", "Young"]


@dataclass
class RetrievalConfig:
    """Phonebook retrieval probe.

    enabled: run it (default True).
    context_lengths: approximate prompt lengths in tokens (default [128, 256, 512]: CPU-demo sizes; the
        paper goes to 32K+).
    num_queries: examples per length (default 16).
    seed: phonebook RNG seed (default 0).
    """

    enabled: bool = True
    context_lengths: list[int] = field(default_factory=lambda: [128, 256, 512])
    num_queries: int = 16
    seed: int = 0


def make_example(tokenizer, length: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one phonebook of about ``length`` tokens."""
    names = [f"{f} {last}" for f in _FIRST for last in _LAST]
    rng.shuffle(names)
    query_suffix = "\n\nWhat is the phone number of {}?\nAnswer:"
    entries: list[tuple[str, str]] = []
    header = "Phonebook:\n"
    # Reserve room for the header and for the longest possible query, so the prompt never exceeds ``length``.
    longest_query = max(len(tokenizer(query_suffix.format(n), add_special_tokens=False)["input_ids"]) for n in names)
    budget = length - len(tokenizer(header, add_special_tokens=False)["input_ids"]) - longest_query
    used = 0
    for name in names:
        number = f"{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
        line = f"{name}: {number}\n"
        n = len(tokenizer(line, add_special_tokens=False)["input_ids"])
        if entries and used + n > budget:
            break
        entries.append((name, number))
        used += n
    name, number = entries[rng.randrange(len(entries))]
    book = "".join(f"{n}: {p}\n" for n, p in entries)
    prompt = tokenizer(header + book + query_suffix.format(name), add_special_tokens=False)["input_ids"]
    answer = tokenizer(" " + number, add_special_tokens=False)["input_ids"]
    return prompt, answer


@torch.no_grad()
def evaluate_retrieval(model, tokenizer, cfg: RetrievalConfig) -> dict:
    """{retrieval_accuracy, retrieval: {length: {accuracy, answer_logprob, tokens}}}."""
    rng = random.Random(cfg.seed)
    device = next(model.parameters()).device
    per_length = {}
    with eval_mode(model):
        for length in cfg.context_lengths:
            hits, logprob, tokens = 0, 0.0, 0
            for _ in range(cfg.num_queries):
                prompt, answer = make_example(tokenizer, length, rng)
                ids = torch.tensor([prompt + answer], device=device)
                logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
                target = torch.tensor(answer, device=device)
                logp = torch.log_softmax(logits, dim=-1).gather(-1, target[:, None]).squeeze(-1)
                hits += bool((logits.argmax(-1) == target).all())
                logprob += logp.mean().item()
                tokens += len(prompt) + len(answer)
            per_length[str(length)] = {"accuracy": hits / cfg.num_queries,
                                       "answer_logprob": logprob / cfg.num_queries,
                                       "tokens": tokens / cfg.num_queries}
    overall = sum(v["accuracy"] for v in per_length.values()) / max(len(per_length), 1)
    return {"retrieval_accuracy": overall, "retrieval": per_length}
