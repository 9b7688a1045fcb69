#!/usr/bin/env python3
"""An independent check of `gdn export`: loads config.json + model.safetensors with numpy alone,
computes the logits of fla's GatedDeltaNetForCausalLM from its equations
(shared/docs/gated-delta-rule.md; fla's GatedDeltaNet layer, GatedMLP, RMSNorm, FusedRMSNormGated),
token by token in float64, and compares them with the logits gdn wrote (`gdn eval --logits-out`).

Nothing from gdn is used but the two files: the "gdn" block of config.json is only read to report
what was folded (the exported weights already carry the multipliers, so fla's equations apply as
they are). Exit 0 when the logits agree within float32 tolerance, 1 otherwise; 77 (skip) without
numpy (Debian: python3-numpy, which launcher/setup.sh installs).

usage: fla_reference_check.py EXPORT_DIR LOGITS.safetensors
"""
import json
import struct
import sys

try:
    import numpy as np
except ImportError:
    print(f"SKIP: numpy is not installed for {sys.executable} "
          "(Debian: apt-get install python3-numpy)")
    sys.exit(77)


def read_safetensors(path):
    """A minimal safetensors reader (F32/F64/I32/BF16/F16), so no extra package is needed."""
    dtypes = {"F32": "<f4", "F64": "<f8", "I32": "<i4", "BF16": "<u2", "F16": "<f2"}
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        t = np.frombuffer(data[base + b:base + end], dtype=dtypes[e["dtype"]])
        if e["dtype"] == "BF16":  # bfloat16 is the upper 16 bits of a float32
            t = (t.astype(np.uint32) << 16).view(np.float32)
        out[name] = t.reshape(e["shape"]).copy()
    return out


def sigmoid(x):  # 1 / (1 + exp(-x)), written so that no exp overflows
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def silu(x):
    return x * sigmoid(x)


def softplus(x):  # torch's F.softplus (beta 1, threshold 20): x above 20, log(1 + e^x) below
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def rms_norm(x, w, eps):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * w


def l2norm(x):  # fla's use_qk_l2norm_in_kernel: x / sqrt(sum x^2 + 1e-6)
    return x / np.sqrt((x ** 2).sum(-1, keepdims=True) + 1e-6)


def forward(cfg, W, tokens):
    """tokens [B, T] -> logits [B, T, V], fla's equations, sequential recurrence, float64."""
    d = cfg["hidden_size"]
    H = cfg["num_heads"]
    HV = cfg.get("num_v_heads") or H
    dk = cfg["head_dim"]
    dv = int(dk * cfg.get("expand_v", 2))
    K = cfg.get("conv_size", 4)
    eps = cfg.get("norm_eps", 1e-6)
    neg = cfg.get("allow_neg_eigval", False)
    assert cfg.get("use_gate", True) and cfg.get("use_short_conv", True)
    B, T = tokens.shape
    x = W["model.embeddings.weight"][tokens.astype(np.int64)]  # [B, T, d]
    assert x.shape[-1] == d
    for layer in range(cfg["num_hidden_layers"]):
        p = lambda n: W[f"model.layers.{layer}.{n}"]
        h = rms_norm(x, p("attn_norm.weight"), eps)

        def conv_silu(u, w):
            """torch's depthwise Conv1d (a cross-correlation, weight [C, 1, K]), causal: left
            padding K-1, so y[t] = sum_j w[j] u[t - (K-1) + j], with u = 0 before the start."""
            up = np.concatenate([np.zeros((B, K - 1, u.shape[-1])), u], axis=1)
            y = sum(up[:, j:j + T, :] * w[:, 0, j] for j in range(K))
            return silu(y)

        q = conv_silu(h @ p("attn.q_proj.weight").T, p("attn.q_conv1d.weight"))
        k = conv_silu(h @ p("attn.k_proj.weight").T, p("attn.k_conv1d.weight"))
        v = conv_silu(h @ p("attn.v_proj.weight").T, p("attn.v_conv1d.weight"))
        a = h @ p("attn.a_proj.weight").T
        b = h @ p("attn.b_proj.weight").T
        g = h @ p("attn.g_proj.weight").T
        q = l2norm(q.reshape(B, T, H, dk))
        k = l2norm(k.reshape(B, T, H, dk))
        v = v.reshape(B, T, HV, dv)
        gamma = -np.exp(p("attn.A_log")) * softplus(a + p("attn.dt_bias"))  # [B, T, HV]
        beta = sigmoid(b) * (2.0 if neg else 1.0)
        scale = dk ** -0.5
        group = HV // H  # value head j reads key head j // group
        S = np.zeros((B, HV, dk, dv))
        o = np.zeros((B, T, HV, dv))
        for t in range(T):
            kt = np.repeat(k[:, t], group, axis=1)  # [B, HV, dk]
            qt = np.repeat(q[:, t], group, axis=1)
            S = S * np.exp(gamma[:, t])[..., None, None]
            u = beta[:, t][..., None] * (v[:, t] - np.einsum("bhkv,bhk->bhv", S, kt))
            S = S + kt[..., :, None] * u[..., None, :]
            o[:, t] = scale * np.einsum("bhkv,bhk->bhv", S, qt)
        # FusedRMSNormGated: rmsnorm(o) * w * silu(g), per value head
        o = rms_norm(o, p("attn.o_norm.weight"), eps) * silu(g.reshape(B, T, HV, dv))
        x = x + o.reshape(B, T, HV * dv) @ p("attn.o_proj.weight").T
        h = rms_norm(x, p("mlp_norm.weight"), eps)
        m = silu(h @ p("mlp.gate_proj.weight").T) * (h @ p("mlp.up_proj.weight").T)
        x = x + m @ p("mlp.down_proj.weight").T
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W["model.embeddings.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    return x @ head.T


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    export_dir, logits_path = sys.argv[1], sys.argv[2]
    with open(f"{export_dir}/config.json") as f:
        cfg = json.load(f)
    W = {n: t.astype(np.float64)
         for n, t in read_safetensors(f"{export_dir}/model.safetensors").items()}
    ref = read_safetensors(logits_path)
    tokens, gdn_logits = ref["tokens"], ref["logits"].astype(np.float64)
    ours = forward(cfg, W, tokens)
    diff = float(np.abs(ours - gdn_logits).max())
    scale = float(np.abs(gdn_logits).max())
    rel = diff / max(scale, 1e-30)
    same_argmax = float((ours.argmax(-1) == gdn_logits.argmax(-1)).mean())
    note = cfg.get("gdn", {}).get("note", "")
    print(f"numpy {np.__version__}: {tuple(tokens.shape)} tokens, "
          f"tied={cfg.get('tie_word_embeddings')}, "
          f"max |logit diff| {diff:.3e} (max |logit| {scale:.3f}, relative {rel:.3e}), "
          f"same argmax {same_argmax:.4f}; folded: {note}")
    ok = rel < 1e-5  # observed ~4e-7 (float32 gdn vs float64 here)
    print("PASS" if ok else "FAIL: logits differ beyond float32 tolerance")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
