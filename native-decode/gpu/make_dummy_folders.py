"""Writes the config-only HF folders the GPU smoke/headline scripts load with
`--load-format dummy` (random weights on the GPU): `dummy/` (small Llama) and
`llama8b/` (Llama-3-8B shape), both with a byte-level tokenizer.json (vocab 260:
3 specials + 256 bytes + one merge), so no model files need to travel.
Usage: python3 make_dummy_folders.py OUT_DIR"""
import json, os, sys

out = sys.argv[1] if len(sys.argv) > 1 else "."


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


vocab = {ch: 3 + i for i, ch in enumerate(bytes_to_unicode())}
vocab["hi"] = 259
tokenizer = {
    "added_tokens": [{"id": i, "content": t, "special": True} for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])],
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    "model": {"type": "BPE", "vocab": vocab, "merges": ["h i"]},
}
tok_cfg = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": "{{ messages[0]['content'] }}"}
shapes = {
    "dummy": dict(num_hidden_layers=8, hidden_size=1024, intermediate_size=2816, num_attention_heads=16,
                  num_key_value_heads=4, rope_theta=10000.0, max_position_embeddings=4096, tie_word_embeddings=True),
    "llama8b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                    num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=False),
}
for name, shape in shapes.items():
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "vocab_size": 260, "rms_norm_eps": 1e-5, **shape}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    json.dump(tokenizer, open(os.path.join(d, "tokenizer.json"), "w"))
    json.dump(tok_cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))
