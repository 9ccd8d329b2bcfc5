"""Convert SmolLM2's GGUF (dequantized by transformers' GGUF loader) into a plain HF folder vLLM can load.

Usage: python gguf_to_hf.py MODEL.gguf OUT_DIR
transformers marks a GGUF-loaded config with a `quantization_config`; vLLM would then look for a GGUF quant
method. Drop it, build a plain model from the clean config, copy the dequantized weights in, save.
"""
import os, sys
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

gguf, out = sys.argv[1], sys.argv[2]
d, f = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
torch.set_num_threads(2)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
src = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
cfg = AutoConfig.from_pretrained(d, gguf_file=f)
if hasattr(cfg, "quantization_config"):
    delattr(cfg, "quantization_config")
cfg.dtype = torch.float32
plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
missing, unexpected = plain.load_state_dict(src.state_dict(), strict=False)
print("missing", missing, "unexpected", unexpected, file=sys.stderr)
assert not [m for m in missing if "lm_head" not in m], missing
plain.tie_weights()
os.makedirs(out, exist_ok=True)
plain.save_pretrained(out)
tok.save_pretrained(out)
print("saved", out, file=sys.stderr)
