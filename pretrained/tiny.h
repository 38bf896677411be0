// Tiny random Hugging Face MoE models (config.json + safetensors, optionally sharded, in
// bitsandbytes 4-bit saved form, with a small trained tokenizer.json) for tests and demos
// of every supported model_type. Written by `pt_tiny` and by the tests.
#ifndef MOE_PT_TINY_H
#define MOE_PT_TINY_H

#include <stdint.h>

#include "../common/util.h"

typedef struct {
    int arch;        // PtArch
    int dtype;       // ST_BF16 or ST_F32 for the weights
    int shards;      // 1: model.safetensors; 2: two shards + model.safetensors.index.json
    int bnb;         // 1: attention / MLP / expert weights in bitsandbytes NF4 saved form (double quant)
    int q_lora;      // deepseek_v3: 1 = q_a_proj/q_b_proj, 0 = plain q_proj (q_lora_rank null)
    int tokenizer;   // 1: also train and write a byte-level BPE tokenizer.json of vocab_size entries
    int vocab_size;  // >= 300 with tokenizer (256 bytes + merges + specials)
    uint64_t seed;
    int hidden;      // hidden size, a multiple of 16 (default 64; heads: 4, or hidden/64 from 256)
    int layers;      // blocks (default 3): deepseek(_v3) layer 0 dense, qwen2_moe layer 1 dense
    int experts;     // routed experts (0: 8, or 6 for qwen2_moe); top-K follows (6 from 64 experts)
    int moe_inter;   // expert width (default 32)
} PtTinyOptions;

void pt_tiny_defaults(PtTinyOptions *o, int arch);
int pt_write_tiny(const char *dir, const PtTinyOptions *o, MoeErr *err);

#endif
