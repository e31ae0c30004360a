"""Peer of the candle UNet training step in JAX (CPU), for scripts/bench/diffusion.sh.

Same architecture as stages/acpo-diffusion/src/unet.rs (DDPM UNet: GroupNorm+SiLU residual
blocks with a time-embedding projection, single/multi-head self-attention at the configured
resolutions, strided-conv downsampling, nearest-upsampling + conv, skip concatenation), same
loss (eps-prediction MSE on q_sample), AdamW with global-norm clipping. NHWC layout, XLA's
fast path on the CPU.

Usage: python diffusion_peer.py MODEL_JSON BATCH STEPS  -> one JSON line on stdout.
"""
import json
import math
import sys
import time

import jax
import jax.numpy as jnp

cfg = {
    "image_size": 32, "in_channels": 3, "channels": 64, "channel_mult": [1, 2, 2],
    "num_res_blocks": 1, "attention_resolutions": [8], "num_heads": 1, "dropout": 0.0,
    "norm_groups": 32, "context_dim": None,
}
cfg.update(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 32
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 5

key = [jax.random.PRNGKey(0)]


def nk():
    key[0], k = jax.random.split(key[0])
    return k


def conv_p(cin, cout, k, zero=False):
    b = 1.0 / math.sqrt(cin * k * k)
    w = jnp.zeros((k, k, cin, cout)) if zero else jax.random.uniform(nk(), (k, k, cin, cout), minval=-b, maxval=b)
    return {"w": w, "b": jnp.zeros((cout,))}


def lin_p(din, dout, zero=False):
    b = 1.0 / math.sqrt(din)
    w = jnp.zeros((din, dout)) if zero else jax.random.uniform(nk(), (din, dout), minval=-b, maxval=b)
    return {"w": w, "b": jnp.zeros((dout,))}


def gn_p(c):
    return {"g": jnp.ones((c,)), "b": jnp.zeros((c,))}


def conv(p, x, stride=1):
    k = p["w"].shape[0]
    pad = k // 2
    y = jax.lax.conv_general_dilated(x, p["w"], (stride, stride), [(pad, pad), (pad, pad)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["b"]


def lin(p, x):
    return x @ p["w"] + p["b"]


G = cfg["norm_groups"]


def gn(p, x):
    b, h, w, c = x.shape
    xg = x.reshape(b, h, w, G, c // G)
    m = xg.mean(axis=(1, 2, 4), keepdims=True)
    v = ((xg - m) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    xn = ((xg - m) / jnp.sqrt(v + 1e-5)).reshape(b, h, w, c)
    return xn * p["g"] + p["b"]


def res_p(cin, cout, td):
    p = {"n1": gn_p(cin), "c1": conv_p(cin, cout, 3), "t": lin_p(td, cout),
         "n2": gn_p(cout), "c2": conv_p(cout, cout, 3, zero=True)}
    if cin != cout:
        p["skip"] = conv_p(cin, cout, 1)
    return p


def res(p, x, temb):
    h = conv(p["c1"], jax.nn.silu(gn(p["n1"], x)))
    h = h + lin(p["t"], jax.nn.silu(temb))[:, None, None, :]
    h = conv(p["c2"], jax.nn.silu(gn(p["n2"], h)))
    s = conv(p["skip"], x) if "skip" in p else x
    return s + h


def attn_p(c):
    return {"n": gn_p(c), "qkv": lin_p(c, 3 * c), "proj": lin_p(c, c, zero=True)}


def attn(p, x):
    b, h, w, c = x.shape
    nh = cfg["num_heads"]
    d = c // nh
    t = gn(p["n"], x).reshape(b, h * w, c)
    q, k, v = jnp.split(lin(p["qkv"], t), 3, axis=-1)
    sp = lambda z: z.reshape(b, h * w, nh, d).transpose(0, 2, 1, 3)
    q, k, v = sp(q), sp(k), sp(v)
    a = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(d), axis=-1) @ v
    a = a.transpose(0, 2, 1, 3).reshape(b, h * w, c)
    return x + lin(p["proj"], a).reshape(b, h, w, c)


ch = cfg["channels"]
td = 4 * ch
mult = cfg["channel_mult"]
nrb = cfg["num_res_blocks"]
ares = cfg["attention_resolutions"]

P = {"t1": lin_p(ch, td), "t2": lin_p(td, td), "in": conv_p(cfg["in_channels"], ch, 3)}
down, skip_ch, cur, res_ = [], [ch], ch, cfg["image_size"]
for i, m in enumerate(mult):
    for _ in range(nrb):
        down.append(("res", res_p(cur, ch * m, td)))
        cur = ch * m
        if res_ in ares:
            down.append(("attn", attn_p(cur)))
        down.append(("keep", None))
        skip_ch.append(cur)
    if i + 1 < len(mult):
        down.append(("down", conv_p(cur, cur, 3)))
        down.append(("keep", None))
        skip_ch.append(cur)
        res_ //= 2
mid = [("res", res_p(cur, cur, td)), ("attn", attn_p(cur)), ("res", res_p(cur, cur, td))]
up = []
for i in reversed(range(len(mult))):
    for _ in range(nrb + 1):
        up.append(("cat_res", res_p(cur + skip_ch.pop(), ch * mult[i], td)))
        cur = ch * mult[i]
        if res_ in ares:
            up.append(("attn", attn_p(cur)))
    if i > 0:
        up.append(("up", conv_p(cur, cur, 3)))
        res_ *= 2
P["down"] = [p for _, p in down]
P["mid"] = [p for _, p in mid]
P["up"] = [p for _, p in up]
P["nout"] = gn_p(cur)
P["out"] = conv_p(cur, cfg["in_channels"], 3, zero=True)
kinds_down = [k for k, _ in down]
kinds_mid = [k for k, _ in mid]
kinds_up = [k for k, _ in up]


def temb_fn(t):
    half = ch // 2
    f = jnp.exp(-math.log(10000.0) * jnp.arange(half) / (half - 1))
    a = t[:, None] * f[None]
    return jnp.concatenate([jnp.sin(a), jnp.cos(a)], axis=1)


def unet(P, x, t):
    temb = lin(P["t2"], jax.nn.silu(lin(P["t1"], temb_fn(t))))
    h = conv(P["in"], x)
    hs = [h]
    for k, p in zip(kinds_down, P["down"]):
        if k == "res":
            h = res(p, h, temb)
        elif k == "attn":
            h = attn(p, h)
        elif k == "down":
            h = conv(p, h, stride=2)
        else:
            hs.append(h)
    for k, p in zip(kinds_mid, P["mid"]):
        h = res(p, h, temb) if k == "res" else attn(p, h)
    for k, p in zip(kinds_up, P["up"]):
        if k == "cat_res":
            h = res(p, jnp.concatenate([h, hs.pop()], axis=-1), temb)
        elif k == "attn":
            h = attn(p, h)
        else:
            h = conv(p, jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))
    return conv(P["out"], jax.nn.silu(gn(P["nout"], h)))


betas = jnp.linspace(1e-4, 0.02, 1000)
abar = jnp.cumprod(1.0 - betas)


def loss_fn(P, x0, t, eps):
    a = abar[t][:, None, None, None]
    xt = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps
    return jnp.mean((unet(P, xt, t.astype(jnp.float32)) - eps) ** 2)


@jax.jit
def step(P, m, v, i, x0, t, eps):
    loss, g = jax.value_and_grad(loss_fn)(P, x0, t, eps)
    norm = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(g)))
    s = jnp.minimum(1.0, 1.0 / (norm + 1e-6))
    g = jax.tree_util.tree_map(lambda x: x * s, g)
    m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
    v = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
    bc1, bc2 = 1 - 0.9 ** i, 1 - 0.999 ** i
    P = jax.tree_util.tree_map(lambda p, a, b: p - 1e-4 * (a / bc1) / (jnp.sqrt(b / bc2) + 1e-8), P, m, v)
    return P, m, v, loss


n_params = sum(x.size for x in jax.tree_util.tree_leaves(P))
m = jax.tree_util.tree_map(jnp.zeros_like, P)
v = jax.tree_util.tree_map(jnp.zeros_like, P)
s = cfg["image_size"]
total = 0.0
cpu = 0.0  # CPU seconds of all the process's threads during the timed steps
for i in range(steps + 1):
    k1, k2, k3 = jax.random.split(nk(), 3)
    x0 = 0.5 * jax.random.normal(k1, (batch, s, s, cfg["in_channels"]))
    eps = jax.random.normal(k2, (batch, s, s, cfg["in_channels"]))
    t = jax.random.randint(k3, (batch,), 0, 1000)
    jax.block_until_ready((x0, eps, t))
    t0, c0 = time.perf_counter(), time.process_time()
    P, m, v, loss = step(P, m, v, float(i + 1), x0, t, eps)
    jax.block_until_ready(loss)
    if i > 0:  # the first step compiles
        total += time.perf_counter() - t0
        cpu += time.process_time() - c0
print(json.dumps({"impl": "jax-" + jax.__version__, "params": int(n_params), "batch": batch, "steps": steps,
                  "step_s": round(total / steps, 4), "images_per_s": round(batch * steps / total, 3),
                  "cores_busy": round(cpu / total, 2)}))
