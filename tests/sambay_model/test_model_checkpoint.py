"""Official checkpoint layout (docs/architecture.md §11): independent writer, Auto loading, exact architecture, save
layout.

The checkpoint here is written straight from a dict of tensors named per docs/architecture.md §11 (not by
save_pretrained), and the logits are checked against a naive re-statement of §1-§7 there (explicit loops,
the four-call differential attention) computed in float64 from the same tensors.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

import sambay_model  # noqa: F401  (registers the Auto classes)
from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM

# Tiny official-style config.json (same keys as the released one, incl. its remote-code auto_map).
CONFIG_JSON = {
    "architectures": ["Phi4FlashForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_phi4flash.Phi4FlashConfig",
        "AutoModelForCausalLM": "modeling_phi4flash.Phi4FlashForCausalLM",
        "AutoTokenizer": "Xenova/gpt-4o",
    },
    "model_type": "phi4flash",
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "mb_per_layer": 2,
    "sliding_window": 6,
    "max_position_embeddings": 262144,
    "hidden_act": "silu",
    "layer_norm_eps": 1e-5,
    "initializer_range": 0.02,
    "attention_dropout": 0.0,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "tie_word_embeddings": True,
    "use_cache": True,
    "_attn_implementation": "flash_attention_2",
    "torch_dtype": "bfloat16",
    "bos_token_id": 95,
    "eos_token_id": 95,
    "pad_token_id": 95,
    "mlp_bias": False,
    "lm_head_bias": False,
    "transformers_version": "4.46.1",
}
D_CONV, D_STATE = 4, 16


def role(i: int, L: int) -> str:
    if i % 2 == 0:
        return "mamba" if i <= L // 2 else "gmu"
    if i < L // 2:
        return "swa"
    return "full" if i == L // 2 + 1 else "cross"


def official_tensors(c: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the names and shapes of docs/architecture.md §11; everything random (biases, norms) so
    nothing hides."""
    g = torch.Generator().manual_seed(seed)
    d, L, H, Hkv = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]
    hd, di, inter = d // H, 2 * d, c["intermediate_size"]
    r = math.ceil(d / 16)

    def rnd(*shape, std=0.1, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    t = {"model.embed_tokens.weight": rnd(c["vocab_size"], d, std=0.5),
         "model.final_layernorm.weight": rnd(d, mean=1.0), "model.final_layernorm.bias": rnd(d)}
    for i in range(L):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": rnd(d, mean=1.0), p + "input_layernorm.bias": rnd(d),
              p + "post_attention_layernorm.weight": rnd(d, mean=1.0), p + "post_attention_layernorm.bias": rnd(d),
              p + "mlp.fc1.weight": rnd(2 * inter, d, std=0.15), p + "mlp.fc2.weight": rnd(d, inter, std=0.15)}
        kind = role(i, L)
        if kind == "mamba":
            dt = torch.rand(di, generator=g) * 0.099 + 0.001
            t |= {p + "attn.in_proj.weight": rnd(2 * di, d, std=0.15),
                  p + "attn.conv1d.weight": rnd(di, 1, D_CONV, std=0.4), p + "attn.conv1d.bias": rnd(di),
                  p + "attn.x_proj.weight": rnd(r + 2 * D_STATE, di, std=0.15),
                  p + "attn.dt_proj.weight": rnd(di, r, std=0.3), p + "attn.dt_proj.bias": torch.log(torch.expm1(dt)),
                  p + "attn.A_log": torch.log(torch.arange(1, D_STATE + 1.0)).repeat(di, 1) + rnd(di, D_STATE),
                  p + "attn.D": rnd(di, mean=1.0), p + "attn.out_proj.weight": rnd(d, di, std=0.15)}
        elif kind == "gmu":
            t |= {p + "attn.in_proj.weight": rnd(di, d, std=0.15), p + "attn.out_proj.weight": rnd(d, di, std=0.15)}
        else:
            width = H * hd if kind == "cross" else H * hd + 2 * Hkv * hd
            t |= {p + "attn.Wqkv.weight": rnd(width, d, std=0.3), p + "attn.Wqkv.bias": rnd(width),
                  p + "attn.out_proj.weight": rnd(d, H * hd, std=0.15), p + "attn.out_proj.bias": rnd(d),
                  p + "attn.inner_cross_attn.subln.weight": rnd(2 * hd, mean=1.0)}
            for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
                t[p + "attn.inner_cross_attn." + name] = rnd(hd, std=0.3)
    return t


def write_checkpoint(path, tensors: dict, config: dict, shards: int = 1, dtype=torch.float32) -> None:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    # docs/architecture.md §11-§12: A_log and the lambdas are stored fp32 even in a bf16 checkpoint.
    stored = {k: (v if k.endswith(("A_log", "lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")) else v.to(dtype))
              for k, v in tensors.items()}
    if shards == 1:
        save_file(stored, str(path / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(stored)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: stored[k] for k in names[s::shards]}
        save_file(part, str(path / fname), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, fname)
    total = sum(v.numel() * v.element_size() for v in stored.values())
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


def reference_logits(t: dict, c: dict, ids: list[int]) -> torch.Tensor:
    """docs/architecture.md §1-§7 restated naively in float64 for one sequence."""
    t = {k: v.double() for k, v in t.items()}
    d, L, H, Hkv = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]
    hd, di, eps, w = d // H, 2 * d, c["layer_norm_eps"], c["sliding_window"]
    T = len(ids)

    def ln(x, p):
        return F.layer_norm(x, (d,), t[p + ".weight"], t[p + ".bias"], eps)

    def attend(q, k, v, window):  # q [T, h, hd], k/v [T, hk, hd]; GQA: q head j uses kv head j // (h // hk)
        out = torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float64)
        group = q.shape[1] // k.shape[1]
        for j in range(q.shape[1]):
            for ti in range(q.shape[0]):
                lo = 0 if window is None else max(0, ti - window + 1)
                s = (k[lo:ti + 1, j // group] @ q[ti, j]) / math.sqrt(hd)
                out[ti, j] = torch.softmax(s, 0) @ v[lo:ti + 1, j // group]
        return out

    x = t["model.embed_tokens.weight"][ids]
    memory = shared = None
    for i in range(L):
        p = f"model.layers.{i}."
        h = ln(x, p + "input_layernorm")
        kind = role(i, L)
        if kind == "mamba":
            xs, z = (h @ t[p + "attn.in_proj.weight"].T).split(di, dim=-1)
            cw, cb = t[p + "attn.conv1d.weight"][:, 0], t[p + "attn.conv1d.bias"]
            u = torch.stack([cb + sum(cw[:, D_CONV - 1 - j] * xs[s - j] for j in range(D_CONV) if s - j >= 0)
                             for s in range(T)])
            u = F.silu(u)
            r = t[p + "attn.dt_proj.weight"].shape[1]
            dt_low, Bm, Cm = (u @ t[p + "attn.x_proj.weight"].T).split([r, D_STATE, D_STATE], dim=-1)
            delta = F.softplus(dt_low @ t[p + "attn.dt_proj.weight"].T + t[p + "attn.dt_proj.bias"])
            A = -torch.exp(t[p + "attn.A_log"])
            state = torch.zeros(di, D_STATE, dtype=torch.float64)
            ys = []
            for s in range(T):
                state = torch.exp(delta[s, :, None] * A) * state + delta[s, :, None] * Bm[s][None, :] * u[s][:, None]
                ys.append(state @ Cm[s] + t[p + "attn.D"] * u[s])
            y = torch.stack(ys)
            if i == L // 2:
                memory = y  # the pre-gate output incl. the D skip
            out = (y * F.silu(z)) @ t[p + "attn.out_proj.weight"].T
        elif kind == "gmu":
            out = (memory * F.silu(h @ t[p + "attn.in_proj.weight"].T)) @ t[p + "attn.out_proj.weight"].T
        else:
            proj = h @ t[p + "attn.Wqkv.weight"].T + t[p + "attn.Wqkv.bias"]
            if kind == "cross":
                q, (k, v) = proj.view(T, H, hd), shared
            else:
                q, k, v = proj.split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
                q, k, v = q.view(T, H, hd), k.view(T, Hkv, hd), v.view(T, Hkv, hd)
                if kind == "full":
                    shared = (k, v)
            window = w if kind == "swa" else None
            q1, q2, k1, k2, v1, v2 = q[:, 0::2], q[:, 1::2], k[:, 0::2], k[:, 1::2], v[:, 0::2], v[:, 1::2]
            a1 = torch.cat([attend(q1, k1, v1, window), attend(q1, k1, v2, window)], dim=-1)
            a2 = torch.cat([attend(q2, k2, v1, window), attend(q2, k2, v2, window)], dim=-1)
            da = p + "attn.inner_cross_attn."
            lam_init = 0.8 - 0.6 * math.exp(-0.3 * i)
            lam = (torch.exp((t[da + "lambda_q1"] * t[da + "lambda_k1"]).sum())
                   - torch.exp((t[da + "lambda_q2"] * t[da + "lambda_k2"]).sum()) + lam_init)
            o = a1 - lam * a2
            o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps) * t[da + "subln.weight"] * (1 - lam_init)
            out = o.reshape(T, H * hd) @ t[p + "attn.out_proj.weight"].T + t[p + "attn.out_proj.bias"]
        x = x + out
        gate, up = (ln(x, p + "post_attention_layernorm") @ t[p + "mlp.fc1.weight"].T).chunk(2, dim=-1)
        x = x + (F.silu(gate) * up) @ t[p + "mlp.fc2.weight"].T
    x = ln(x, "model.final_layernorm")
    return x @ t["model.embed_tokens.weight"].T


@pytest.fixture(scope="module")
def tensors():
    return official_tensors(CONFIG_JSON)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, CONFIG_JSON["vocab_size"], (1, 15), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("shards", [1, 3])
def test_official_layout_loads_exactly_and_matches_spec_reference(tmp_path, tensors, ids, shards):
    ckpt = tmp_path / "official"
    write_checkpoint(ckpt, tensors, CONFIG_JSON, shards=shards)
    config = AutoConfig.from_pretrained(ckpt)
    assert isinstance(config, Phi4FlashConfig)
    model, info = AutoModelForCausalLM.from_pretrained(ckpt, output_loading_info=True, dtype=torch.float32)
    assert isinstance(model, Phi4FlashForCausalLM)  # our class, not the auto_map remote code
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    state = model.state_dict()
    for name, value in tensors.items():  # loaded weights were not clobbered by initialisation
        assert torch.equal(state[name], value), name
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits[0].double()
    ref = reference_logits(tensors, CONFIG_JSON, ids[0].tolist())
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=5e-5)


def test_save_pretrained_writes_the_official_layout(tmp_path, tensors, ids):
    ckpt = tmp_path / "official"
    write_checkpoint(ckpt, tensors, CONFIG_JSON)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    out = tmp_path / "saved"
    model.save_pretrained(out)
    saved = load_file(str(out / "model.safetensors"))
    assert set(saved) == set(tensors)  # same names, no lm_head.weight (tied)
    for name, value in tensors.items():
        assert saved[name].shape == value.shape, name
    saved_config = json.loads((out / "config.json").read_text())
    assert saved_config["model_type"] == "phi4flash"
    assert "auto_map" not in saved_config or not saved_config["auto_map"]
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert reloaded.config.sliding_window == model.config.sliding_window == [None, 6, None, 6] + [None] * 4
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, use_cache=False).logits, model(ids, use_cache=False).logits,
                                   rtol=0, atol=0)


def test_bf16_checkpoint_keeps_ssm_and_lambda_params_fp32(tmp_path, tensors, ids):
    ckpt = tmp_path / "official_bf16"
    write_checkpoint(ckpt, tensors, CONFIG_JSON, shards=2, dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16)
    for name, p in model.named_parameters():
        keep = name.endswith(("attn.A_log", "attn.D", "lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"))
        assert p.dtype == (torch.float32 if keep else torch.bfloat16), name
    assert torch.equal(model.model.layers[0].attn.A_log, tensors["model.layers.0.attn.A_log"])
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits.double()[0]
    ref = reference_logits(tensors, CONFIG_JSON, ids[0].tolist())
    # bf16 weights and activations: only a loose agreement is expected.
    assert float((logits - ref).abs().max()) < 0.1 * float(ref.abs().max())
