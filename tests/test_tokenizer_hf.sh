#!/usr/bin/env bash
# Hugging Face `tokenizers` compatibility of our byte-level BPE, both directions
# (tests/reference/hf_tokenizer_check.py). Skips when the Python package cannot be installed.
set -u
BUILD=${BUILD:-build}
name=hf_tokenizer_compat
if ! python3 -c "import tokenizers" 2>/dev/null; then
  # one 120 s budget for both attempts (the second for pip's "externally managed" refusal)
  timeout 120 bash -c 'pip install -q tokenizers || pip install -q --break-system-packages tokenizers' >/dev/null 2>&1
fi
if ! python3 -c "import tokenizers" 2>/dev/null; then
  echo "SKIP $name: python package tokenizers not installable"
  exit 0
fi
if [ ! -x "$BUILD/tokenizer" ]; then
  echo "FAIL $name: $BUILD/tokenizer is not built"
  exit 1
fi
work=$(mktemp -d /tmp/test_tokenizer_hf.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 tests/reference/hf_tokenizer_check.py --bpe "$BUILD/tokenizer" --work "$work"
