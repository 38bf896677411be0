// export: a checkpoint of our trainer -> a Hugging Face deepseek_v3 folder (config.json,
// model.safetensors, tokenizer.json) that `collect` and transformers can load.
#include "../data/dataloader.h"
#include "../train/checkpoint.h"
#include "export.h"
#include "safetensors.h"

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: export --ckpt CKPT --out DIR [options]\n"
            "  --ckpt CKPT       checkpoint file, or a run folder / run name (its latest checkpoint) (required)\n"
            "  --out DIR         output folder (required)\n"
            "  --dtype D         f32 | bf16 weights (default f32)\n"
            "  --tokenizer FILE  tokenizer.json to copy beside the weights (default data/cache/default/tokenizer.json\n"
            "                    when it exists; \"none\" for no tokenizer)\n"
            "  --bos ID          bos_token_id for config.json (default -1: left out)\n"
            "  --eos ID          eos_token_id for config.json (default -1: left out)\n"
            "  -h, --help        this help\n");
}

int main(int argc, char **argv) {
    const char *ckpt = NULL, *out = NULL, *tok = NULL;
    int dtype = ST_F32, bos = -1, eos = -1;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) { usage(stdout); return 0; }
        if (i + 1 >= argc) { usage(stderr); fprintf(stderr, "export: error: %s needs a value (or is unknown)\n", f); return 1; }
        const char *v = argv[++i];
        if (!strcmp(f, "--ckpt")) ckpt = v;
        else if (!strcmp(f, "--out")) out = v;
        else if (!strcmp(f, "--tokenizer")) tok = v;
        else if (!strcmp(f, "--dtype")) {
            if (!strcmp(v, "f32")) dtype = ST_F32;
            else if (!strcmp(v, "bf16")) dtype = ST_BF16;
            else { fprintf(stderr, "export: error: --dtype %s: expected f32 or bf16\n", v); return 1; }
        } else if (!strcmp(f, "--bos") || !strcmp(f, "--eos")) {
            char *end;
            long x = strtol(v, &end, 10);
            if (!*v || *end || x < -1 || x > 100000000) { fprintf(stderr, "export: error: %s %s: expected an id\n", f, v); return 1; }
            if (!strcmp(f, "--bos")) bos = (int)x; else eos = (int)x;
        } else { usage(stderr); fprintf(stderr, "export: error: unknown flag %s\n", f); return 1; }
    }
    if (!ckpt || !out) { usage(stderr); fprintf(stderr, "export: error: --ckpt and --out are required\n"); return 1; }
    MoeErr err;
    char path[4096];
    if (ckpt_resolve(ckpt, path, sizeof(path), &err) != 0) { fprintf(stderr, "export: error: %s\n", err.msg); return 1; }
    ModelConfig cfg;
    CkptTrainState st;
    if (ckpt_read_header(path, &cfg, &st, &err) != 0) { fprintf(stderr, "export: error: %s\n", err.msg); return 1; }
    Model m;
    if (model_init(&m, &cfg, 1, 1, 0, &err) != 0) { fprintf(stderr, "export: error: %s\n", err.msg); return 1; }
    if (ckpt_load(path, &m, &st, 0, &err) != 0) { fprintf(stderr, "export: error: %s\n", err.msg); return 1; }
    const char *tj = NULL;
    if (tok && strcmp(tok, "none") != 0) tj = tok;
    else if (!tok && file_exists("data/cache/default/tokenizer.json")) tj = "data/cache/default/tokenizer.json";
    if (pt_export(&m, out, dtype, tj, bos, eos, &err) != 0) { fprintf(stderr, "export: error: %s\n", err.msg); return 1; }
    printf("exported %s (step %lld) to %s: deepseek_v3, %d layers, %d experts top-%d%s%s\n", path, (long long)st.step, out,
           cfg.n_layers, cfg.n_routed_experts, cfg.top_k, tj ? ", tokenizer from " : "", tj ? tj : "");
    model_free(&m);
    return 0;
}
