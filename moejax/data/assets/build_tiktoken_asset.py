"""Rebuilds ``moejax_bpe_8k.tiktoken``, the tiktoken encoding shipped with moejax.

OpenAI's encodings are downloaded at run time, which our machines cannot do, so moejax ships its
own: a byte-level BPE (8192 ranks) trained with Hugging Face ``tokenizers`` on CPython's bundled
documentation (``pydoc_data.topics``) and written in tiktoken's rank-file format
(``base64(token bytes) rank`` per line; single bytes are ranks 0..255, then merges in order).

    python -m moejax.data.assets.build_tiktoken_asset
"""

import base64
import os

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tokenizers.pre_tokenizers import ByteLevel

VOCAB = 8192
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "moejax_bpe_8k.tiktoken")


def main() -> None:
    import pydoc_data.topics as topics

    texts = [topics.topics[k] for k in sorted(topics.topics)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, initial_alphabet=ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(texts, trainer)
    # ByteLevel maps each byte to a printable character; invert that map to get raw bytes.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    char_to_byte = {chr(c): b for b, c in zip(bs, cs)}
    ranks = {bytes([b]): b for b in range(256)}
    import json
    merges = json.loads(tok.to_str())["model"]["merges"]
    for m in merges:
        left, right = m if isinstance(m, list) else m.split(" ")
        tb = bytes(char_to_byte[c] for c in left + right)
        if tb not in ranks:
            ranks[tb] = len(ranks)
    with open(OUT, "w") as f:
        for tb, r in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(tb).decode()} {r}\n")
    print(f"wrote {OUT}: {len(ranks)} ranks")


if __name__ == "__main__":
    main()
