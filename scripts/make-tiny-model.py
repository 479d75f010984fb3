#!/usr/bin/env python3
"""Write a tiny llama-architecture GGUF that real llama.cpp and Ollama load and generate from.

The weights are random but shaped so that greedy (and low-temperature) decoding is predictable, which tests need:

* the residual stream is dominated by the token embedding (attention and FFN weights are small random matrices, so
  they run real compute but barely move the hidden state), which makes the model a bigram table: the output row of
  token j is the embedding of the one token that should precede it;
* the vocabulary's whole words are shuffled (by the seed) into sentences of 6-10 words; each word's successor is the
  next word of its sentence, and a sentence's last word is followed by EOS (embedding dimension 0 marks last words);
* every other token (byte fallback, specials, single characters) is followed by the first word of the "answer"
  sentence (embedding dimension 1 marks them). The vocabulary has no word fragments, so SentencePiece cannot merge a
  prompt's characters into whole words: any prompt is answered with the answer sentence, then EOS.

Two seeds give two different answers: that is how tests tell model versions apart. `--target-mb` widens the FFN to
make a large file (for pulls slow enough to interrupt) with the same behaviour.

Needs the PyPI package `gguf` (and numpy) on PYTHONPATH. Prints one JSON line describing the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover - reported to the caller as one line
    sys.stderr.write("make-tiny-model: the Python package 'gguf' is missing (pip install gguf)\n")
    sys.exit(3)

# A few hundred common English words: the vocabulary's whole-word pieces (all lower case, unique).
WORDS = """
the of and to in is it you that he was for on are with as his they be at one have this from or had by hot word but
what some we can out other were all there when up use your how said an each she which do their time if will way
about many then them write would like so these her long make thing see him two has look more day could go come did
number sound no most people my over know water than call first who may down side been now find any new work part
take get place made live where after back little only round man year came show every good me give our under name
very through just form sentence great think say help low line differ turn cause much mean before move right boy old
too same tell does set three want air well also play small end put home read hand port large spell add even land
here must big high such follow act why ask men change went light kind off need house picture try us again animal
point mother world near build self earth father head stand own page should country found answer school grow study
still learn plant cover food sun four between state keep eye never last let thought city tree cross farm hard start
might story saw far sea draw left late run while press close night real life few north open seem together next white
children begin got walk example ease paper group always music those both mark often letter until mile river car feet
care second book carry took science eat room friend began idea fish mountain stop once base hear horse cut sure watch
color face wood main enough plain girl usual young ready above ever red list though feel talk bird soon body dog
family direct pose leave song measure door product black short numeral class wind question happen complete ship area
half rock order fire south problem piece told knew pass since top whole king space heard best hour better true during
hundred five remember step early hold west ground interest reach fast verb sing listen six table travel less morning
ten simple several vowel toward war lay against pattern slow center love person money serve appear road map rain rule
govern pull cold notice voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star
box noun field rest correct able pound done beauty drive stood contain front teach week final gave green quick
develop ocean warm free minute strong special mind behind clear tail produce fact street inch multiply nothing course
stay wheel full force blue object decide surface deep moon island foot system busy test record boat common gold
possible plane stead dry wonder laugh thousand ago ran check game shape equate miss brought heat snow tire bring yes
distant fill east paint language among
""".split()

# Ollama and llama-server both render this from the GGUF's tokenizer.chat_template (jinja).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

SPACE = "\u2581"  # SentencePiece's word-boundary marker


def build_vocab() -> tuple[list[str], list[float], list[int], list[int]]:
    """Tokens, scores, types, and the ids of whole-word tokens."""
    words = list(dict.fromkeys(WORDS))
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    # Single characters, then whole words. No word fragments: SentencePiece merges cannot reach a whole word from its
    # characters, so a prompt tokenizes to characters and bytes only and every reply is the answer sentence.
    pieces = list(dict.fromkeys([SPACE, *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'"]))
    pieces += [SPACE + w for w in words]
    first_piece = len(tokens)
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    scores = [0.0] * first_piece + [-float(i) for i in range(len(pieces))]
    index = {t: i for i, t in enumerate(tokens)}
    word_ids = [index[SPACE + w] for w in words]
    return tokens, scores, [int(t) for t in types], word_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="path of the .gguf to write")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--name", default="gpuops-tiny v1", help="general.name")
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-ff", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=2048, help="llama.context_length")
    ap.add_argument("--target-mb", type=float, default=0, help="widen the FFN until the file is about this size")
    args = ap.parse_args()

    n_embd, n_layer, n_head = args.n_embd, args.n_layer, args.n_head
    if n_embd % n_head or n_embd < 16:
        ap.error("--n-embd must be at least 16 and a multiple of --n-head")
    tokens, scores, types, word_ids = build_vocab()
    n_vocab = len(tokens)
    n_ff = args.n_ff
    if args.target_mb > 0:
        fixed = 4 * (2 * n_vocab * n_embd + n_layer * (4 * n_embd * n_embd + 2 * n_embd) + n_embd)
        n_ff = max(n_ff, int((args.target_mb * 1024 * 1024 - fixed) / (4 * 3 * n_embd * n_layer)) // 256 * 256)

    rng = np.random.default_rng(args.seed)
    order = [int(i) for i in rng.permutation(word_ids)]
    sentences: list[list[int]] = []
    while order:
        n = int(rng.integers(6, 11))
        if len(order) - n < 6:
            n = len(order)
        sentences.append(order[:n])
        order = order[n:]
    answer = sentences[0]
    word_set = set(word_ids)

    # Embeddings: whole words are random in dims 2.., last words of a sentence add dim 0; every other token is dim 1.
    # Rows have RMS about 1 so the final RMSNorm leaves them as they are.
    emb = np.zeros((n_vocab, n_embd), dtype=np.float32)
    for t in range(n_vocab):
        if t in word_set:
            emb[t, 2:] = rng.standard_normal(n_embd - 2)
        else:
            emb[t, 1] = np.sqrt(n_embd)
    for s in sentences:
        emb[s[-1], 0] = 3.0
    alpha = 30.0  # logit of the intended successor; rivals sit near 0.5·alpha at most
    out = np.zeros((n_vocab, n_embd), dtype=np.float32)
    for s in sentences:
        for prev, nxt in zip(s, s[1:]):
            out[nxt] = emb[prev] * alpha / n_embd
    out[2, 0] = alpha / 3.0  # EOS follows a sentence's last word
    out[answer[0], 1] = alpha / np.sqrt(n_embd)  # the answer follows everything that is not a whole word

    tmp = args.out + ".tmp"  # written beside the target, renamed when complete
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(args.name)
    w.add_context_length(args.ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def small(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", out)
    down_std = 0.02 * min(1.0, np.sqrt(128 / n_ff))  # keep a wide FFN's contribution as small as a narrow one's
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", small(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", small(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", small(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", small(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", small(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", small(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", small(n_embd, n_ff, std=down_std))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, args.out)

    digest = hashlib.sha256()
    with open(args.out, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    print(
        json.dumps(
            {
                "path": os.path.abspath(args.out),
                "name": args.name,
                "seed": args.seed,
                "bytes": os.path.getsize(args.out),
                "sha256": digest.hexdigest(),
                "n_vocab": n_vocab,
                "n_embd": n_embd,
                "n_layer": n_layer,
                "n_ff": n_ff,
                # What greedy decoding answers to any prompt (a leading space may come before it).
                "answer": " ".join(tokens[t][1:] for t in answer),
            }
        )
    )


if __name__ == "__main__":
    main()
