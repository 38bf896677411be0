#!/usr/bin/env python3
"""Logits of a Hugging Face model folder computed by transformers, for the comparison in
tests/test_collect_hf.sh (test_pretrained --check-hf).

  python3 tests/reference/pretrained_hf.py MODEL_DIR OUT.safetensors [MODEL_DIR OUT.safetensors ...]

For each model folder, writes "tokens" (I64 [2, T]) and "logits" (F32 [2, T, V]) for two fixed random sequences,
computed in float32 with eager attention. Exit status 3 when torch / transformers are missing.
"""
import sys

try:
    import torch
    import transformers
    from safetensors.torch import save_file
except ImportError as e:
    sys.stderr.write("pretrained_hf.py: %s\n" % e)
    sys.exit(3)


def run(model_dir, out):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, vocab, (2, 11), generator=g)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits.float()
    save_file({"tokens": tokens.to(torch.int64).contiguous(), "logits": logits.contiguous()}, out)
    print("transformers %s: %s logits %s" % (transformers.__version__, type(model).__name__, tuple(logits.shape)))


def main():
    args = sys.argv[1:]
    if len(args) < 2 or len(args) % 2:
        sys.exit(__doc__)
    status = 0
    for i in range(0, len(args), 2):
        try:
            run(args[i], args[i + 1])
        except Exception as e:  # report and go on with the next model
            sys.stderr.write("pretrained_hf.py: %s: %s: %s\n" % (args[i], type(e).__name__, e))
            status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
