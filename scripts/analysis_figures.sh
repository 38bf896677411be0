#!/usr/bin/env bash
# The figures of ANALYSIS.md, from the runs of scripts/analysis.sh and
# scripts/analysis_speculate.sh, copied into docs/analysis/ (small PNGs, committed).
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build/report >/dev/null
out=docs/analysis
mkdir -p "$out"
for r in runs/an_*/; do [ -e "$r/train.jsonl" ] && ./build/report -q "$r" >/dev/null 2>&1 || true; done
./build/report -q --compare runs/an_cmp_balance runs/an_bal_none runs/an_bal_aux1e-2 runs/an_bal_bias_g1e-3 runs/an_bal_bias_seqaux >/dev/null
./build/report -q --compare runs/an_cmp_gamma runs/an_bal_bias_g1e-4 runs/an_bal_bias_g1e-3 runs/an_bal_bias_g1e-2 >/dev/null
./build/report -q --compare runs/an_cmp_collapse runs/an_collapse_softmax_none_hilr runs/an_collapse_fix_bias_g1e-2 runs/an_gate_softmax_aux runs/an_gate_softmax_bias >/dev/null
./build/report -q --compare runs/an_cmp_scratch runs/an_scratch_ref runs/an_scratch_noshared runs/an_scratch_fine16 runs/an_scratch_mtp >/dev/null
cp runs/an_base/share_grid.png "$out/base_share_grid.png"
cp runs/an_base/entropy.png "$out/base_entropy.png"
cp runs/an_base/bias.png "$out/base_bias.png"
cp runs/an_cmp_balance/compare_load.png "$out/balance_load.png"
cp runs/an_cmp_balance/compare_maxvio.png "$out/balance_maxvio.png"
cp runs/an_cmp_gamma/compare_maxvio.png "$out/gamma_maxvio.png"
cp runs/an_cmp_collapse/compare_load.png "$out/collapse_load.png"
cp runs/an_collapse_softmax_none_hilr/share_grid.png "$out/collapse_share_grid.png"
cp runs/an_cmp_scratch/compare_load.png "$out/scratch_load.png"
cp runs/an_bal_bias_g1e-3/domains.png "$out/domains_bias.png"
cp runs/an_scratch_noshared/domains.png "$out/domains_noshared.png"
cp runs/an_bal_bias_g1e-3/coact_across.png "$out/coact_across.png"
if [ -d runs/an_bal_bias_g1e-3_spec ]; then
  cp runs/an_bal_bias_g1e-3_spec/recall_per_layer.png "$out/spec_recall_per_layer.png"
  cp runs/an_bal_bias_g1e-3_spec/hit_rate_vs_cache.png "$out/spec_hit_rate.png"
fi
du -sh "$out"
