// pt_tiny: write a tiny random Hugging Face MoE model (config.json, safetensors, tokenizer.json)
// of any supported model_type, for trying `collect` and for tests.
#include <omp.h>

#include "hfconfig.h"
#include "safetensors.h"
#include "tiny.h"

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: pt_tiny --out DIR [options]\n"
            "  --out DIR        folder to write (required)\n"
            "  --arch A         deepseek | qwen2_moe | deepseek_v3 (default deepseek)\n"
            "  --dtype D        bf16 | f32 weights (default bf16)\n"
            "  --shards N       1 or 2 safetensors files (2: with model.safetensors.index.json) (default 1)\n"
            "  --bnb 0|1        projections in bitsandbytes NF4 saved form (default 0)\n"
            "  --q-lora 0|1     deepseek_v3: low-rank query (default 1)\n"
            "  --tokenizer 0|1  also train and write tokenizer.json (default 1)\n"
            "  --vocab V        vocabulary size, >= 300 with a tokenizer (default 320)\n"
            "  --seed S         (default 1)\n"
            "  --hidden C       hidden size, a multiple of 16 (default 64)\n"
            "  --layers L       blocks (default 3)\n"
            "  --experts E      routed experts (default 8; qwen2_moe 6); top-K 2, 3, or 6 from 64 experts\n"
            "  --moe-inter I    expert width (default 32)\n"
            "  -h, --help       this help\n");
}

int main(int argc, char **argv) {
    PtTinyOptions o;
    pt_tiny_defaults(&o, PT_DEEPSEEK);
    o.tokenizer = 1;
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { usage(stdout); return 0; }
        if (i + 1 >= argc) { usage(stderr); fprintf(stderr, "pt_tiny: error: %s needs a value (or is unknown)\n", argv[i]); return 1; }
        const char *f = argv[i], *v = argv[++i];
        char *end = NULL;
        long x = strtol(v, &end, 10);
        int is_num = *v && *end == 0;
        if (!strcmp(f, "--out")) out = v;
        else if (!strcmp(f, "--arch")) {
            if (!strcmp(v, "deepseek")) o.arch = PT_DEEPSEEK;
            else if (!strcmp(v, "qwen2_moe")) o.arch = PT_QWEN2_MOE;
            else if (!strcmp(v, "deepseek_v3")) o.arch = PT_DEEPSEEK_V3;
            else { fprintf(stderr, "pt_tiny: error: --arch %s: expected deepseek, qwen2_moe or deepseek_v3\n", v); return 1; }
        } else if (!strcmp(f, "--dtype")) {
            if (!strcmp(v, "bf16")) o.dtype = ST_BF16;
            else if (!strcmp(v, "f32")) o.dtype = ST_F32;
            else { fprintf(stderr, "pt_tiny: error: --dtype %s: expected bf16 or f32\n", v); return 1; }
        } else if (!is_num) { fprintf(stderr, "pt_tiny: error: %s %s: expected a number (or unknown flag)\n", f, v); return 1; }
        else if (!strcmp(f, "--shards") && (x == 1 || x == 2)) o.shards = (int)x;
        else if (!strcmp(f, "--bnb") && (x == 0 || x == 1)) o.bnb = (int)x;
        else if (!strcmp(f, "--q-lora") && (x == 0 || x == 1)) o.q_lora = (int)x;
        else if (!strcmp(f, "--tokenizer") && (x == 0 || x == 1)) o.tokenizer = (int)x;
        else if (!strcmp(f, "--vocab") && x >= 16 && x <= 1000000) o.vocab_size = (int)x;
        else if (!strcmp(f, "--seed") && x >= 0) o.seed = (uint64_t)x;
        else if (!strcmp(f, "--hidden") && x >= 16 && x <= 65536) o.hidden = (int)x;
        else if (!strcmp(f, "--layers") && x >= 1 && x <= 256) o.layers = (int)x;
        else if (!strcmp(f, "--experts") && x >= 1 && x <= 1024) o.experts = (int)x;
        else if (!strcmp(f, "--moe-inter") && x >= 1 && x <= 1000000) o.moe_inter = (int)x;
        else { usage(stderr); fprintf(stderr, "pt_tiny: error: bad flag or value: %s %s\n", f, v); return 1; }
    }
    if (!out) { usage(stderr); fprintf(stderr, "pt_tiny: error: --out DIR is required\n"); return 1; }
    if (o.tokenizer && o.vocab_size < 300) { fprintf(stderr, "pt_tiny: error: --vocab must be >= 300 with a tokenizer\n"); return 1; }
    MoeErr err;
    if (pt_write_tiny(out, &o, &err) != 0) { fprintf(stderr, "pt_tiny: error: %s\n", err.msg); return 1; }
    printf("wrote a tiny %s model to %s\n", pt_arch_name(o.arch), out);
    return 0;
}
