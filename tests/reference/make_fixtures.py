#!/usr/bin/env python3
"""Generate duet's reference fixtures for the default model (SmolLM2-135M-Instruct Q4_1 GGUF).

Writes
  tests/reference/fixtures/tokens.txt  -- tokenizer reference (HF `tokenizers`, Rust BPE)
  tests/reference/fixtures/logits.txt  -- greedy-decode reference (numpy llama forward pass)

Neither uses any duet code: the tokenizer is HF `tokenizers` built from the GGUF's own
vocabulary/merges, and the forward pass is a plain numpy implementation of the llama
architecture on weights dequantized by the `gguf` Python package.

Usage (developer machine, not CI):
  pip install -r tests/reference/requirements.txt
  python3 tests/reference/make_fixtures.py [--model PATH] [--check]

--check additionally runs the independence sanity checks (no-KV-cache recompute,
float64 recompute, pure-Python BPE cross-check) and prints the results.
"""

import argparse
import datetime
import hashlib
import os
import sys
import time

import numpy as np
import gguf
from gguf import GGUFReader
from gguf.quants import dequantize
import tokenizers
from tokenizers import Tokenizer, AddedToken, models, pre_tokenizers, decoders

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
DEFAULT_MODEL = os.path.expanduser("~/.cache/duet/SmolLM2-135M-Instruct.Q4_1.gguf")
EXPECTED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

N_STEPS = 32
TOPK = 5

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(q):
    return ("<|im_start|>system\n" + SYSTEM + "<|im_end|>\n"
            "<|im_start|>user\n" + q + "<|im_end|>\n<|im_start|>assistant\n")


# --------------------------------------------------------------------------- inputs

TOKEN_STRINGS = [
    "",
    " ",
    "Hello",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Hello world\n",
    "café",
    "naïve résumé",
    "Zürich is in Switzerland.",
    "Ångström, façade, jalapeño, Øresund",
    "中文",
    "日本語のテキストです。",
    "한국어 문장입니다",
    "Привет, мир!",
    "مرحبا بالعالم",
    "Mixed: English, 中文, русский, and ελληνικά in one line.",
    "😀",
    "I ❤️ emoji 🎉🎉",
    "👨‍👩‍👧‍👦 family",
    "👩🏽‍💻 coder",
    "🇫🇷🇯🇵 flags",
    "def add(a, b):\n    return a + b\n",
    "int main(void) {\n\tprintf(\"hi\\n\");\n\treturn 0;\n}\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "if x:\n        y = {'k': [1, 2, 3]}\n",
    "\n\n\n",
    "   x",
    "a  b",
    "trailing spaces   ",
    "tab\there\t\tand\ttabs",
    " \n \t \r\n",
    "12345",
    "3.14159",
    "1,000,000",
    "Call 555-0123 in 2024.",
    "don't",
    "I'M",
    "we'll they're it's you've I'd",
    "HELLO World hElLo",
    "<|im_start|>user\nHello<|im_end|>\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "<|im_end|><|im_start|>",
    "<repo_name>duet<file_sep>main.c",
    "<|im_start",
    "Supercalifragilisticexpialidocious",
    "pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
    "a" * 100,
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=2",
    "email@example.com #hashtag @user $100 50% ~tilde",
    "\"quoted\" 'single' `backtick`",
    "\u00a0non-breaking\u00a0space",
    "zero\u200bwidth",
    "line1\r\nline2\rline3",
    "!!!???...,,,",
    "x²+y²=z²  ∑∫√π",
]

LONG_PROMPT = (
    "The history of computing is a story of steadily shrinking machines and steadily "
    "growing ambitions. In the 1940s, electronic computers such as ENIAC filled entire "
    "rooms, consumed enormous amounts of power, and were programmed by physically "
    "rewiring panels of cables. The invention of the transistor in 1947 and of the "
    "integrated circuit a decade later made it possible to build machines that were "
    "smaller, faster and far more reliable. By the 1970s, microprocessors put a complete "
    "central processing unit on a single chip, and personal computers began to appear "
    "in homes and offices. The 1990s brought the World Wide Web, which connected those "
    "computers into a global network and changed how people communicate, shop and learn. "
    "Today, smartphones carry more computing power than the supercomputers of a few "
    "decades ago, and large language models can write essays, answer questions and "
    "generate code. Looking back over this history, the single most important lesson is"
)

PROMPTS = [
    "The capital of France is",
    chatml("What is the capital of France?"),
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "#include <stdio.h>\n\nint main(void) {\n",
    "Here is a list of fruits:\n1. Apple\n2. Banana\n3.",
    "Question: What is 12 + 7?\nAnswer:",
    chatml("What is 15 multiplied by 4?"),
    chatml("Write a haiku about the ocean."),
    "Le café de Paris est",
    "Hello",
    "The three primary colors are",
    LONG_PROMPT,
    chatml("Give me three tips for staying healthy."),
]


# --------------------------------------------------------------------------- tokenizer

def field(reader, key):
    return reader.fields[key].contents()


def build_tokenizer(reader):
    toks = field(reader, "tokenizer.ggml.tokens")
    merges_raw = field(reader, "tokenizer.ggml.merges")
    ttype = field(reader, "tokenizer.ggml.token_type")
    vocab = {t: i for i, t in enumerate(toks)}
    assert len(vocab) == len(toks), "duplicate tokens in vocab"
    merges = []
    for m in merges_raw:
        parts = m.split(" ")
        assert len(parts) == 2, repr(m)
        merges.append((parts[0], parts[1]))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tk.decoder = decoders.ByteLevel()
    specials = [toks[i] for i in range(len(toks)) if ttype[i] == 3]
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False,
                                      single_word=False, lstrip=False, rstrip=False)
                           for s in specials])
    for s in specials:
        assert tk.token_to_id(s) == vocab[s], s
    return tk, toks, merges_raw, ttype, specials


def encode(tk, s):
    return tk.encode(s, add_special_tokens=False).ids


# --------------------------------------------------------------------------- model

class Model:
    def __init__(self, reader, dtype=np.float32):
        self.dtype = dtype
        g = lambda k: field(reader, k)
        self.n_layer = int(g("llama.block_count"))
        self.d = int(g("llama.embedding_length"))
        self.n_head = int(g("llama.attention.head_count"))
        self.n_kv = int(g("llama.attention.head_count_kv"))
        self.hd = self.d // self.n_head
        self.theta = float(g("llama.rope.freq_base"))
        self.eps = float(g("llama.attention.layer_norm_rms_epsilon"))
        assert int(g("llama.rope.dimension_count")) == self.hd
        W = {}
        for t in reader.tensors:
            a = dequantize(t.data, t.tensor_type).astype(dtype)
            # numpy shape is (rows=out_features, cols=in_features); gguf ne is reversed
            shape = tuple(int(x) for x in reversed(t.shape))
            W[t.name] = a.reshape(shape)
        assert "output.weight" not in W, "expected tied embeddings"
        self.W = W
        self.emb = W["token_embd.weight"]                    # (vocab, d)
        half = np.arange(0, self.hd, 2, dtype=np.float64)     # 2j
        self.inv_freq = self.theta ** (-half / self.hd)       # theta^(-2j/hd)

    def rms(self, x, w):
        x64 = x.astype(np.float64)
        r = 1.0 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + self.eps)
        return (x64 * r).astype(self.dtype) * w

    def rope(self, x, pos):
        # x: (T, H, hd); interleaved (GPT-J / llama.cpp "normal") pairing (2j, 2j+1)
        ang = np.outer(pos.astype(np.float64), self.inv_freq)          # (T, hd/2)
        c = np.cos(ang).astype(self.dtype)[:, None, :]
        s = np.sin(ang).astype(self.dtype)[:, None, :]
        x0 = x[..., 0::2]
        x1 = x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    def new_cache(self):
        return [[np.zeros((0, self.n_kv, self.hd), self.dtype),
                 np.zeros((0, self.n_kv, self.hd), self.dtype)] for _ in range(self.n_layer)]

    def forward(self, ids, cache, pos0):
        """Feed tokens `ids` at positions pos0.. ; returns logits (T, vocab)."""
        W = self.W
        T = len(ids)
        pos = np.arange(pos0, pos0 + T)
        x = self.emb[np.asarray(ids)]                                  # (T, d)
        rep = self.n_head // self.n_kv
        scale = 1.0 / np.sqrt(self.hd)
        for l in range(self.n_layer):
            p = "blk.%d." % l
            h = self.rms(x, W[p + "attn_norm.weight"])
            q = (h @ W[p + "attn_q.weight"].T).reshape(T, self.n_head, self.hd)
            k = (h @ W[p + "attn_k.weight"].T).reshape(T, self.n_kv, self.hd)
            v = (h @ W[p + "attn_v.weight"].T).reshape(T, self.n_kv, self.hd)
            q = self.rope(q, pos)
            k = self.rope(k, pos)
            kc = np.concatenate([cache[l][0], k], axis=0)
            vc = np.concatenate([cache[l][1], v], axis=0)
            cache[l][0], cache[l][1] = kc, vc
            S = kc.shape[0]
            kpos = np.arange(S)
            mask = kpos[None, :] > pos[:, None]                         # (T, S) causal
            att_out = np.empty((T, self.n_head, self.hd), self.dtype)
            for hh in range(self.n_head):
                kv = hh // rep                                          # GQA mapping
                sc = (q[:, hh, :] @ kc[:, kv, :].T) * scale             # (T, S)
                sc = np.where(mask, -np.inf, sc)
                sc = sc - sc.max(axis=-1, keepdims=True)
                pr = np.exp(sc)
                pr /= pr.sum(axis=-1, keepdims=True)
                att_out[:, hh, :] = pr @ vc[:, kv, :]
            x = x + att_out.reshape(T, self.d) @ W[p + "attn_output.weight"].T
            h = self.rms(x, W[p + "ffn_norm.weight"])
            gt = h @ W[p + "ffn_gate.weight"].T
            up = h @ W[p + "ffn_up.weight"].T
            act = gt / (1.0 + np.exp(-gt)) * up                         # SwiGLU
            x = x + act @ W[p + "ffn_down.weight"].T
        x = self.rms(x, W["output_norm.weight"])
        return x @ self.emb.T                                          # tied output


def topk(logits, k=TOPK):
    idx = np.argsort(-logits, kind="stable")[:k]
    return [(int(i), float(logits[i])) for i in idx]


def greedy(model, prompt_ids, n_steps=N_STEPS):
    cache = model.new_cache()
    logits = model.forward(prompt_ids, cache, 0)[-1]
    pos = len(prompt_ids)
    steps = []
    for _ in range(n_steps):
        tk = topk(logits)
        chosen = tk[0][0]
        steps.append((chosen, tk, logits.copy()))
        logits = model.forward([chosen], cache, pos)[-1]
        pos += 1
    return steps


# --------------------------------------------------------------------------- sanity checks

def pure_python_bpe(toks, merges_raw, specials, s):
    """Crude, slow independent BPE (GPT-2 byte-level + SmolLM pre-tokenizer regex), for
    cross-checking `tokenizers` on a few strings."""
    import regex
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    b2u = {b: chr(c) for b, c in zip(bs, cs)}
    vocab = {t: i for i, t in enumerate(toks)}
    rank = {tuple(m.split(" ")): i for i, m in enumerate(merges_raw)}
    digit = regex.compile(r"(\p{N})")
    pat = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
    sp = regex.compile("(" + "|".join(regex.escape(x) for x in specials) + ")")
    out = []
    for chunk in sp.split(s):
        if chunk == "":
            continue
        if chunk in vocab and chunk in specials:
            out.append(vocab[chunk])
            continue
        words = [w for piece in digit.split(chunk) if piece for w in pat.findall(piece)]
        for w in words:
            sym = [b2u[b] for b in w.encode("utf-8")]
            while len(sym) > 1:
                best = min(((rank.get((sym[i], sym[i + 1]), 1 << 30), i) for i in range(len(sym) - 1)))
                if best[0] == 1 << 30:
                    break
                i = best[1]
                sym = sym[:i] + [sym[i] + sym[i + 1]] + sym[i + 2:]
            out.extend(vocab[x] for x in sym)
    return out


# --------------------------------------------------------------------------- main

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def header(kind, sha):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        "# duet reference fixture: %s" % kind,
        "# generated by tests/reference/make_fixtures.py on %s" % now,
        "# python %s, numpy %s, gguf %s, tokenizers %s" % (
            sys.version.split()[0], np.__version__, pkg_version("gguf"), tokenizers.__version__),
        "# model SmolLM2-135M-Instruct.Q4_1.gguf sha256 %s" % sha,
    ]


def pkg_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--check", action="store_true", help="run sanity checks too")
    args = ap.parse_args()

    t0 = time.time()
    sha = sha256_file(args.model)
    if sha != EXPECTED_SHA256:
        print("warning: model sha256 %s != expected %s" % (sha, EXPECTED_SHA256), file=sys.stderr)
    reader = GGUFReader(args.model)
    tk, toks, merges_raw, ttype, specials = build_tokenizer(reader)
    os.makedirs(FIXTURES, exist_ok=True)

    # ---- tokens.txt
    lines = header("tokenizer (token ids)", sha) + [
        "# tokenizer: HF tokenizers BPE from GGUF tokenizer.ggml.tokens/merges; pre_tokenizer",
        "#   Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)]);",
        "#   token_type==3 tokens added as special tokens (split out of text); no BOS/EOS added",
        "# format: <hex of UTF-8 input>\\t<space-separated token ids>",
    ]
    for s in TOKEN_STRINGS:
        ids = encode(tk, s)
        dec = tk.decode(ids, skip_special_tokens=False)
        assert dec == s, "round trip failed for %r -> %r" % (s, dec)
        lines.append(s.encode("utf-8").hex() + "\t" + " ".join(map(str, ids)))
    with open(os.path.join(FIXTURES, "tokens.txt"), "w", encoding="ascii", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    print("tokens.txt: %d strings" % len(TOKEN_STRINGS))

    if args.check:
        for s in TOKEN_STRINGS:
            a = encode(tk, s)
            b = pure_python_bpe(toks, merges_raw, specials, s)
            print("bpe-crosscheck %-5s %r" % ("OK" if a == b else "DIFF", s[:40]))
            if a != b:
                print("   tokenizers:", a, "\n   python    :", b)

    # ---- logits.txt
    t1 = time.time()
    model = Model(reader)
    print("weights dequantized in %.1fs" % (time.time() - t1))
    out = header("greedy decode logits (top-%d per step)" % TOPK, sha) + [
        "# forward: numpy float32, llama arch, interleaved RoPE pairs (2j,2j+1) theta=%g," % model.theta,
        "#   GQA %d q-heads / %d kv-heads, RMSNorm eps=%g, SwiGLU, tied token_embd output, float32 KV cache"
        % (model.n_head, model.n_kv, model.eps),
        "# weights dequantized to float32 with gguf.quants.dequantize (Q4_1 / Q8_0 / F32)",
        "# each prompt is tokenized without BOS; %d greedy steps, decoding does NOT stop at EOS/<|im_end|>" % N_STEPS,
        "# step k: <argmax id> then top-%d <id>:<logit> (5 decimals), distribution after prompt + steps<k" % TOPK,
    ]
    all_steps = []
    for pi, prompt in enumerate(PROMPTS):
        tp = time.time()
        ids = encode(tk, prompt)
        steps = greedy(model, ids)
        all_steps.append((ids, steps))
        chosen = [c for c, _, _ in steps]
        text = tk.decode(chosen, skip_special_tokens=False)
        margins = [tk5[0][1] - tk5[1][1] for _, tk5, _ in steps]
        out.append("# prompt %d (%d tokens): %s" % (pi, len(ids), ascii(prompt if len(prompt) < 80 else prompt[:77] + "...")))
        out.append("# continuation: %s" % ascii(text))
        out.append("# min top1-top2 margin %.5f at step %d" % (min(margins), int(np.argmin(margins))))
        out.append("prompt " + prompt.encode("utf-8").hex())
        out.append("prompt_tokens " + " ".join(map(str, ids)))
        for k, (c, tk5, _) in enumerate(steps):
            out.append("step %d %d " % (k, c) + " ".join("%d:%.5f" % (i, v) for i, v in tk5))
        out.append("end")
        print("prompt %2d: %3d tokens, %.1fs, min margin %.4f: %r" % (
            pi, len(ids), time.time() - tp, min(margins), text))
    with open(os.path.join(FIXTURES, "logits.txt"), "w", encoding="ascii", newline="\n") as f:
        f.write("\n".join(out) + "\n")

    if args.check:
        # (a) recompute without KV cache: full sequence in one forward at each of a few steps
        ids, steps = all_steps[0]
        seq = list(ids) + [c for c, _, _ in steps]
        for k in (0, 5, N_STEPS - 1):
            full = model.forward(seq[:len(ids) + k], model.new_cache(), 0)[-1]
            d = np.abs(full - steps[k][2]).max()
            print("no-cache recompute prompt 0 step %d: max |dlogit| = %.3e" % (k, d))
        # (b) token-by-token prefill (different matmul shapes) vs batched prefill
        cache = model.new_cache()
        for i, t in enumerate(ids):
            lg = model.forward([t], cache, i)[-1]
        print("token-by-token prefill prompt 0 step 0: max |dlogit| = %.3e"
              % np.abs(lg - steps[0][2]).max())
        # (c) float64 recompute of all prompts (teacher-forced on float32 choices)
        del model
        m64 = Model(reader, np.float64)
        worst = 0.0
        for pi, (ids, steps) in enumerate(all_steps):
            seq = list(ids) + [c for c, _, _ in steps[:-1]]
            lg = m64.forward(seq, m64.new_cache(), 0)[len(ids) - 1:]
            d = max(np.abs(lg[k] - steps[k][2]).max() for k in range(N_STEPS))
            agree = sum(int(np.argmax(lg[k])) == steps[k][0] for k in range(N_STEPS))
            worst = max(worst, d)
            print("float64 vs float32 prompt %2d: max |dlogit| = %.3e, argmax agree %d/%d"
                  % (pi, d, agree, N_STEPS))
        print("float64 vs float32 worst max |dlogit| = %.3e" % worst)

    print("total %.1fs" % (time.time() - t0))


if __name__ == "__main__":
    main()
