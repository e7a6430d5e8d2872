"""Final export in the Hugging Face layout: weights + config, tokenizer, generation config.

SFT, DPO, evaluation and ``AutoModelForCausalLM.from_pretrained`` (after ``import sambay_model``) read it.
Under ZeRO-3 the partitioned parameters are gathered first. Written to a temporary directory and renamed.

Two layouts, chosen by the run's source directory (the ``tokenizer_dir`` of :func:`save_export`: the init export of
SFT and DPO, the data's tokenizer in pretraining):

- a **hub snapshot** in, a hub snapshot out. A source whose ``config.json`` lacks sambay's own keys (it was written
  by the published remote code, like microsoft/Phi-4-mini-flash-reasoning, or is such an export) is the export's
  :class:`ExportTemplate`: its ``config.json`` is copied unchanged (``sliding_window`` an int as published,
  ``auto_map``, ``_attn_implementation``, ``torch_dtype``, ``use_cache``; no sambay training key added), the
  weights keep its tensor names, shapes and dtypes (bf16 in, bf16 out), sharded with an index above
  ``max_shard_size``, and its tokenizer files, ``generation_config.json`` and remote-code modules are copied;
- otherwise sambay's layout: ``save_pretrained`` (every ``Phi4FlashConfig`` key, per-layer ``sliding_window``,
  the training dtype), the tokenizer re-saved and a generation config made from it.

A model with LoRA adapters (``peft.enabled``) is exported merged, in the same layout and tensor names as without
them, and its adapter alone goes to ``adapter/`` beside the export (``train.runtime.lora.merge_for_export``).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file

from data.atomic import atomic_dir
from data.tokenizer import TOKENIZER_FILES, load_tokenizer, save_generation_config
from sambay_model import Phi4FlashConfig
from sambay_model.configuration_phi4flash import RELEASED_TOKEN_IDS, RUNTIME_KEYS, SAMBAY_MARKER_KEY
from train.config import EXPORT_MAX_SHARD_SIZE
from train.runtime.distributed import DistInfo, barrier
from train.runtime.lora import merge_for_export

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Files of a hub snapshot that travel unchanged into its export (those present are copied).
_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


def is_hub_style(config: dict) -> bool:
    """A ``config.json`` written by the published remote code (or copied from one), not by this package, which
    writes every ``Phi4FlashConfig`` key, :data:`SAMBAY_MARKER_KEY` included."""
    return config.get("model_type") == Phi4FlashConfig.model_type and SAMBAY_MARKER_KEY not in config


def safetensors_header(path: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every tensor in a ``.safetensors`` file, from its header (no weights read)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    specs = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which an export cannot write")
        specs[name] = (_SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"]))
    return specs


def weight_files(source: Path) -> list[Path]:
    """The safetensors files of a snapshot: those its index names, else ``model.safetensors``."""
    if (source / INDEX_FILE).is_file():
        weight_map = json.loads((source / INDEX_FILE).read_text())["weight_map"]
        return [source / name for name in sorted(set(weight_map.values()))]
    if (source / SINGLE_FILE).is_file():
        return [source / SINGLE_FILE]
    raise FileNotFoundError(f"{source}: a hub snapshot needs {SINGLE_FILE} or {INDEX_FILE} (safetensors weights)")


@dataclass(frozen=True)
class ExportTemplate:
    """What a hub-style export copies from its source snapshot: ``config`` (its ``config.json``, as read) and
    ``tensors`` (name -> dtype, shape of every stored weight)."""

    source: Path
    config: dict
    tensors: dict[str, tuple[torch.dtype, tuple[int, ...]]]

    @classmethod
    def read(cls, source: str | Path) -> "ExportTemplate | None":
        """The template of ``source`` when it is a hub-style model directory, else None (sambay's layout)."""
        source = Path(source)
        config_file = source / "config.json"
        if not config_file.is_file():
            return None
        config = json.loads(config_file.read_text())
        if not is_hub_style(config):
            return None
        tensors = {}
        for file in weight_files(source):
            tensors.update(safetensors_header(file))
        return cls(source, config, tensors)

    def companion_files(self) -> list[Path]:
        """Tokenizer files, generation config and the remote-code modules ``auto_map`` names, where present."""
        modules = {ref.split(".")[0] + ".py" for ref in self.config.get("auto_map", {}).values()}
        names = list(TOKENIZER_FILES) + sorted(modules)
        return [self.source / n for n in names if (self.source / n).is_file()]


def check_config_matches(template: ExportTemplate, model_config: Phi4FlashConfig) -> None:
    """Refuse to write the template's ``config.json`` for a model it does not describe: every ``Phi4FlashConfig``
    field read from it must equal the model's, run-time switches (``RUNTIME_KEYS``) and the tokenizer's special ids
    aside (those the file and its generation config keep as published, whatever a trainer set on the model)."""
    expected = Phi4FlashConfig.from_dict(template.config)
    skip = set(RUNTIME_KEYS) | set(RELEASED_TOKEN_IDS)
    fields = [k for k in Phi4FlashConfig.__annotations__ if k not in skip]
    differ = {k: (getattr(expected, k), getattr(model_config, k)) for k in fields
              if getattr(expected, k) != getattr(model_config, k)}
    if differ:
        raise ValueError(f"export: the model no longer matches {template.source}/config.json, which a hub-style "
                         f"export copies; differing keys (file, model): {differ}")


def hub_state_dict(model: torch.nn.Module, template: ExportTemplate) -> dict[str, torch.Tensor]:
    """The model's weights under the template's names, shapes and dtypes, on the CPU; a tensor the template
    lacks may only be a tied one (``lm_head.weight`` with tied embeddings, as published)."""
    state = model.state_dict()
    missing = sorted(set(template.tensors) - set(state))
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    extra = sorted(set(state) - set(template.tensors) - tied)
    if missing or extra:
        raise ValueError(f"export: tensor names differ from {template.source}: missing in the model {missing[:5]}, "
                         f"not in the snapshot {extra[:5]}")
    out = {}
    for name, (dtype, shape) in template.tensors.items():
        tensor = state[name]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"export: tensor {name!r} has shape {tuple(tensor.shape)}, {template.source} has {shape}")
        out[name] = tensor.detach().to(device="cpu", dtype=dtype, copy=True).contiguous()
    return out


def write_safetensors(tensors: dict[str, torch.Tensor], out_dir: Path, max_shard_size: int | str) -> None:
    """``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` files of at most ``max_shard_size`` (bytes
    or a string such as "5GB") with ``model.safetensors.index.json`` (``metadata.total_size``, ``weight_map``)."""
    split = split_torch_state_dict_into_shards(tensors, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_size)
    for file, names in split.filename_to_tensors.items():
        save_file({n: tensors[n] for n in names}, str(out_dir / file), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def save_hub_export(model: torch.nn.Module, template: ExportTemplate, out_dir: Path,
                    max_shard_size: int | str) -> None:
    """Write the hub-style export of ``model`` into the (fresh, empty) directory ``out_dir``."""
    check_config_matches(template, model.config)
    write_safetensors(hub_state_dict(model, template), out_dir, max_shard_size)
    shutil.copyfile(template.source / "config.json", out_dir / "config.json")
    for file in template.companion_files():
        shutil.copyfile(file, out_dir / file.name)


def save_sambay_export(model: torch.nn.Module, tokenizer_dir: Path, out_dir: Path) -> None:
    """Write sambay's layout (module docstring) into the (fresh, empty) directory ``out_dir``."""
    tokenizer = load_tokenizer(tokenizer_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    save_generation_config(tokenizer, out_dir, bos_token_id=model.config.bos_token_id)


def save_export(model: torch.nn.Module, tokenizer_dir: Path, out_dir: Path,
                max_shard_size: int | str = EXPORT_MAX_SHARD_SIZE) -> None:
    """Write ``out_dir`` atomically from a model whose parameters are all materialised (rank 0 only), in the
    layout of ``tokenizer_dir`` (module docstring); ``max_shard_size`` applies to the hub layout. A LoRA model's
    adapter is saved beside ``out_dir`` and merged first (the model's last use, ``lora.merge_for_export``)."""
    template = ExportTemplate.read(tokenizer_dir)
    model = merge_for_export(model, Path(out_dir))
    if out_dir.exists():
        print(f"[export] replacing {out_dir} left by an interrupted run (no DONE)", flush=True)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        if template is None:
            save_sambay_export(model, Path(tokenizer_dir), tmp)
        else:
            save_hub_export(model, template, tmp, max_shard_size)


def export_model(engine, tokenizer_dir: Path, out_dir: Path, dist_info: DistInfo, zero_stage: int,
                 max_shard_size: int | str = EXPORT_MAX_SHARD_SIZE) -> None:
    """Collective: gather ZeRO-3 shards if needed; rank 0 writes the export."""
    model = engine.module
    gather = (deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
              if zero_stage == 3 else contextlib.nullcontext())
    with gather:
        if dist_info.is_main:
            save_export(model, Path(tokenizer_dir), Path(out_dir), max_shard_size)
    barrier()
