"""Talk to or sample from a model export: one completion for a prompt, or a chat on the terminal.

    python -m train.generate model_path=runs/dpo/export prompt="What is 12 * 7?"    # prints the completion
    python -m train.generate model_path=runs/dpo/export                             # chat (a REPL on stdin)
    python -m train.generate model_path=HUB_DIR system="Answer briefly." temperature=0.7 top_p=0.95 seed=1

``model_path`` is a stage's ``export/`` or a hub-style snapshot such as the published Phi-4-mini-flash-reasoning.
Every prompt is rendered by the export's own chat template with the assistant header appended, and a completion
ends at the stop ids of ``data.tokenizer.stop_token_ids`` (the export's ``generation_config.json`` EOS ids, then
``<|end|>`` and ``<|endoftext|>``). In chat mode each turn's prompt is the whole conversation so far; ``/reset``
forgets it (the system message stays), ``/exit`` or end of input (Ctrl-D) ends the session. With a prompt only
the completion goes to stdout (loading messages go to stderr), so the command composes with shell pipes.

``prompt=`` is a Hydra override: a prompt with a comma, ``=``, brackets or an apostrophe must be quoted for Hydra
inside the shell's quotes, e.g. ``'prompt="Solve: 3x = 12, then add 1."'`` (chat turns are read as typed).
"""
from __future__ import annotations

import readline  # noqa: F401  (line editing and history in input() on a terminal)
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from recipes.entry import hydra_main
from train.evals.evaluate_config import DEVICES, DTYPES
from train.evals.generation import SamplingConfig, conversation_prompt, generate, load_model

EXIT_COMMAND = "/exit"
RESET_COMMAND = "/reset"
USER_PROMPT = ">>> "


@dataclass
class GenerateConfig:
    """Schema of ``train.generate`` (registered as ``generate_schema``; unknown keys are errors).

    model_path: the export directory to load: a stage's ``export/`` or a hub-style snapshot (default ``None``;
        required).
    prompt: one user message; its completion is printed (default ``None``: no prompt, chat mode).
    chat: ``None`` (default) = chat exactly when no ``prompt`` is given; ``true`` = chat, with ``prompt`` (when set)
        as the first user turn; ``false`` = print one completion of ``prompt`` (then ``prompt`` is required).
    system: a system message put first in every prompt (default ``None``: none).
    max_new_tokens: generation budget per reply (default 512).
    temperature: 0 (default) = greedy, so the same prompt gives the same text; > 0 samples.
    top_p: nucleus sampling mass when ``temperature`` > 0 (default 1.0).
    seed: torch seed set before each reply, so a sampled reply is repeatable (default 0).
    device: ``auto`` (default: cuda when available, else cpu), ``cpu``, ``cuda``.
    dtype: model dtype, ``float32`` (default) or ``bfloat16`` (half the memory; for GPUs).
    """

    model_path: Optional[str] = None
    prompt: Optional[str] = None
    chat: Optional[bool] = None
    system: Optional[str] = None
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.model_path:
            raise ValueError("model_path is required: set model_path=<export dir> (a stage's export/ or a hub "
                             "snapshot such as microsoft/Phi-4-mini-flash-reasoning downloaded to a local dir)")
        if self.chat is False and not self.prompt:
            raise ValueError("prompt is required with chat=false: set prompt=\"...\" (or leave chat unset to chat)")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        self.sampling()  # checks the sampling keys now, before minutes of model loading

    @property
    def chat_mode(self) -> bool:
        """Whether this run is a chat (see ``chat``)."""
        return self.chat if self.chat is not None else not self.prompt

    def sampling(self) -> SamplingConfig:
        """The sampling settings as ``train.evals.generation`` takes them (one reply per prompt)."""
        try:
            return SamplingConfig(num_samples=1, temperature=self.temperature, top_p=self.top_p,
                                  max_new_tokens=self.max_new_tokens, batch_size=1, seed=self.seed)
        except ValueError as err:
            # SamplingConfig names its keys as the evaluate schema nests them (sampling.top_p); here they are
            # top-level keys, and an error must name the key to set.
            raise ValueError(str(err).replace("sampling.", "")) from err


def register_generate_schema() -> None:
    """Register :class:`GenerateConfig` with Hydra's ConfigStore as ``generate_schema`` (idempotent)."""
    ConfigStore.instance().store(name="generate_schema", node=GenerateConfig)


@dataclass
class ChatSession:
    """A conversation with a model: the messages so far (``system`` first, when set) and the next reply."""

    model: object
    tokenizer: object
    sampling: SamplingConfig
    system: Optional[str] = None
    messages: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the conversation; the system message stays."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, user_text: str) -> str:
        """The model's reply to ``user_text`` after the conversation so far; both join the conversation."""
        messages = self.messages + [{"role": "user", "content": user_text}]
        prompt = conversation_prompt(self.tokenizer, messages)
        text = generate(self.model, self.tokenizer, [prompt], self.sampling)[0][0]
        self.messages = messages + [{"role": "assistant", "content": text}]
        return text


def chat_repl(session: ChatSession, read: Callable[[str], str] = input,
              write: Callable[[str], None] = print) -> None:
    """Read user turns with ``read`` until ``/exit``, end of input or Ctrl-C; ``write`` each reply.

    Blank lines are skipped; ``/reset`` starts the conversation over."""
    print(f"chat: {RESET_COMMAND} forgets the conversation, {EXIT_COMMAND} or Ctrl-D ends it", file=sys.stderr)
    while True:
        try:
            line = read(USER_PROMPT)
        except (EOFError, KeyboardInterrupt):
            write("")  # the terminal's cursor is still on the prompt line
            return
        text = line.strip()
        if text == EXIT_COMMAND:
            return
        if text == RESET_COMMAND:
            session.reset()
            print("(conversation reset)", file=sys.stderr)
        elif text:
            write(session.reply(line))


def run_recipe(dcfg: DictConfig) -> int:
    """Run a composed generate recipe: print one completion, or chat; returns the process exit status."""
    cfg: GenerateConfig = OmegaConf.to_object(dcfg)  # runs the dataclass's own validation
    model, tokenizer = load_model(cfg.model_path, cfg.device, cfg.dtype)
    session = ChatSession(model, tokenizer, cfg.sampling(), cfg.system)
    if cfg.prompt:
        print(session.reply(cfg.prompt), flush=True)
    if cfg.chat_mode:
        chat_repl(session)
    return 0


main = hydra_main("generate", register_generate_schema, run_recipe)


if __name__ == "__main__":
    main()
