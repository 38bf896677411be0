#!/usr/bin/env bash
# pretrained/ against Hugging Face transformers: tiny random qwen2_moe and deepseek_v3 models
# (pt_tiny, fp32) and a model of our own trainer exported to deepseek_v3 (pretrained/export.c)
# are run by transformers (tests/reference/pretrained_hf.py) and by pt_forward; logits must
# agree to ~1e-4. deepseek (DeepSeek-MoE-16B) uses remote code that transformers does not ship:
# it is checked against the reference computation of test_pretrained instead.
# Python: $MOE_PYTHON, python3, or ~/.cache/moe-pyenv (created here with `pip install torch
# transformers safetensors bitsandbytes` from PyPI, at most 600 s, once; MOE_NO_PIP=1 skips
# the install). Without torch + transformers every case is SKIPped with the reason.
set -u
BUILD=${BUILD:-build}
TINY=$BUILD/pt_tiny
CHECK=$BUILD/tests/test_pretrained
EXPORT=$BUILD/tests/test_pretrained_export
for b in "$TINY" "$CHECK" "$EXPORT"; do
  if [ ! -x "$b" ]; then echo "FAIL hf_binaries: $b not built"; exit 1; fi
done
venv="$HOME/.cache/moe-pyenv"
has_pkgs() { "$1" -c 'import torch, transformers, safetensors' >/dev/null 2>&1; }
PY=""
for c in "${MOE_PYTHON:-}" python3 "$venv/bin/python"; do
  [ -n "$c" ] && has_pkgs "$c" && { PY=$c; break; }
done
if [ -z "$PY" ] && [ -z "${MOE_NO_PIP:-}" ] && [ ! -e "$venv.failed" ]; then
  echo "installing torch + transformers into $venv (pip, at most 600 s) ..." >&2
  if python3 -m venv "$venv" >/dev/null 2>&1 && \
     timeout 600 "$venv/bin/python" -m pip install -q torch transformers safetensors bitsandbytes >/dev/null 2>&1 && \
     has_pkgs "$venv/bin/python"; then
    PY="$venv/bin/python"
  else
    date > "$venv.failed"  # do not retry on every run; delete this file to try again
  fi
fi
names="qwen2_moe deepseek_v3 deepseek_v3_plain_q our_trainer_export"
if [ -z "$PY" ]; then
  for n in $names; do echo "SKIP hf_$n: no Python with torch + transformers (pip install failed or disabled; set MOE_PYTHON)"; done
  echo "SKIP hf_deepseek: the deepseek model type needs remote code that transformers does not ship"
  exit 0
fi
tmp=$(mktemp -d /tmp/test_collect_hf.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$TINY" --out "$tmp/qwen2_moe" --arch qwen2_moe --dtype f32 --tokenizer 0 --seed 2 >/dev/null
"$TINY" --out "$tmp/deepseek_v3" --arch deepseek_v3 --dtype f32 --tokenizer 0 --seed 3 >/dev/null
"$TINY" --out "$tmp/deepseek_v3_plain_q" --arch deepseek_v3 --dtype f32 --q-lora 0 --tokenizer 0 --seed 4 >/dev/null
"$EXPORT" --write "$tmp/our_trainer_export" >/dev/null
pyargs=()
for n in $names; do pyargs+=("$tmp/$n" "$tmp/$n.ref.safetensors"); done
"$PY" tests/reference/pretrained_hf.py "${pyargs[@]}" > "$tmp/py.log" 2>&1  # one Python start for all models
for n in $names; do
  if [ ! -s "$tmp/$n.ref.safetensors" ]; then
    echo "FAIL hf_$n: transformers could not run the model: $(grep "$tmp/$n:" "$tmp/py.log" | tail -1)"
    continue
  fi
  "$CHECK" --check-hf "$tmp/$n.ref.safetensors" "$tmp/$n" "hf_$n" 2>/dev/null | grep -E '^(PASS|FAIL|  )'
done
echo "SKIP hf_deepseek: the deepseek model type needs remote code that transformers does not ship (checked against test_pretrained's reference)"
exit 0
