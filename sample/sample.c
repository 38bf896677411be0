// sample: generate text from a checkpoint with DeepSeek-V3's absorbed MLA KV cache (only the
// latent c_kv and the shared RoPE key k_pe are cached per token and layer).
//
//   build/sample -c checkpoints/default -p "In the beginning" -n 100 -t 0.8 -k 40 -s 1
//
// The text (prompt, then the generated continuation, streamed) goes to stdout; the model,
// the cache size per token against plain multi-head attention and the speed go to stderr.
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "../common/util.h"
#include "../model/generate.h"
#include "../model/model.h"
#include "../tokenizer/tokenizer.h"
#include "../train/checkpoint.h"

typedef struct {
    const char *checkpoint;
    const char *tokenizer;
    const char *prompt;
    const char *prompt_file;
    int length;
    float temperature;
    int top_k;
    float top_p;
    uint64_t seed;
    int bos;
    int stop;
    int quiet;
} SampleArgs;

static void args_default(SampleArgs *a) {
    memset(a, 0, sizeof(*a));
    a->checkpoint = "checkpoints/default";
    a->tokenizer = "data/cache/default/tokenizer.json";
    a->prompt = "";
    a->prompt_file = "";
    a->length = 128;
    a->temperature = 0.8f;
    a->top_k = 40;
    a->top_p = 0.95f;
    a->seed = 1337;
    a->bos = 1;
    a->stop = 1;
    a->quiet = 0;
}

static void usage(FILE *fp) {
    SampleArgs d;
    args_default(&d);
    fprintf(fp,
            "usage: sample [flags]\n"
            "Generates text from a checkpoint with the absorbed MLA KV cache (c_kv + k_pe per token).\n"
            "The text goes to stdout; the cache size per token vs plain multi-head attention to stderr.\n"
            "flags (default in brackets):\n"
            "  -c, --checkpoint PATH   a .ckpt file, a run's checkpoint folder or a run name  [%s]\n"
            "      --tokenizer PATH    Hugging Face tokenizer.json  [%s]\n"
            "  -p, --prompt TEXT       text to continue  [\"%s\"]\n"
            "  -f, --prompt-file PATH  read the prompt from a file (instead of -p)  [none]\n"
            "  -n, --length N          tokens to generate (capped by the model's max_seq_len)  [%d]\n"
            "  -t, --temperature F     sampling temperature, 0 = greedy  [%g]\n"
            "  -k, --top-k N           keep the N most likely tokens, 0 = all  [%d]\n"
            "      --top-p F           then keep the smallest set with probability mass >= F, 1 = all  [%g]\n"
            "  -s, --seed N            random seed (the same seed gives the same text)  [%llu]\n"
            "      --bos 0|1           start with the tokenizer's BOS token, as documents do in training  [%d]\n"
            "      --stop 0|1          stop at a document boundary (BOS or EOS generated)  [%d]\n"
            "  -q, --quiet             no information lines on stderr  [off]\n"
            "  -h, --help              this help\n",
            d.checkpoint, d.tokenizer, d.prompt, d.length, d.temperature, d.top_k, d.top_p, (unsigned long long)d.seed,
            d.bos, d.stop);
}

// ---------------------------------------------------------------------------------------
// argument parsing: every value is checked, one clear line on error

static void die(const char *fmt, const char *a, const char *b) {
    fprintf(stderr, "sample: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n");
    exit(EXIT_FAILURE);
}

static long parse_long(const char *flag, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        char range[64];
        snprintf(range, sizeof range, "an integer in %ld..%ld", lo, hi);
        fprintf(stderr, "sample: %s expects %s, got '%s'\n", flag, range, s);
        exit(EXIT_FAILURE);
    }
    return v;
}

static float parse_float(const char *flag, const char *s, float lo, float hi) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "sample: %s expects a number in %g..%g, got '%s'\n", flag, lo, hi, s);
        exit(EXIT_FAILURE);
    }
    return v;
}

static uint64_t parse_u64(const char *flag, const char *s) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') die("%s expects a non-negative integer, got '%s'", flag, s);
    return (uint64_t)v;
}

// returns 1 when -h was given
static int parse_args(SampleArgs *a, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) return 1;
        if (!strcmp(f, "-q") || !strcmp(f, "--quiet")) {
            a->quiet = 1;
            continue;
        }
        // --flag=value or --flag value
        char name[64];
        const char *val = NULL;
        const char *eq = strncmp(f, "--", 2) == 0 ? strchr(f, '=') : NULL;
        if (eq) {
            size_t n = (size_t)(eq - f);
            if (n >= sizeof name) die("unknown flag '%s'%s (see -h)", f, "");
            memcpy(name, f, n);
            name[n] = 0;
            val = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", f);
        }
#define IS(s, l) (!strcmp(name, s) || !strcmp(name, l))
        int known = IS("-c", "--checkpoint") || IS("--tokenizer", "--tokenizer") || IS("-p", "--prompt") ||
                    IS("-f", "--prompt-file") || IS("-n", "--length") || IS("-t", "--temperature") ||
                    IS("-k", "--top-k") || IS("--top-p", "--top-p") || IS("-s", "--seed") ||
                    IS("--bos", "--bos") || IS("--stop", "--stop");
        if (!known) die("unknown flag '%s'%s (see -h)", f, "");
        if (!val) {
            if (i + 1 >= argc) die("flag %s needs a value%s (see -h)", f, "");
            val = argv[++i];
        }
        if (IS("-c", "--checkpoint")) a->checkpoint = val;
        else if (IS("--tokenizer", "--tokenizer")) a->tokenizer = val;
        else if (IS("-p", "--prompt")) a->prompt = val;
        else if (IS("-f", "--prompt-file")) a->prompt_file = val;
        else if (IS("-n", "--length")) a->length = (int)parse_long("--length", val, 1, 1L << 24);
        else if (IS("-t", "--temperature")) a->temperature = parse_float("--temperature", val, 0.0f, 1e6f);
        else if (IS("-k", "--top-k")) a->top_k = (int)parse_long("--top-k", val, 0, INT_MAX);
        else if (IS("--top-p", "--top-p")) a->top_p = parse_float("--top-p", val, 1e-6f, 1.0f);
        else if (IS("-s", "--seed")) a->seed = parse_u64("--seed", val);
        else if (IS("--bos", "--bos")) a->bos = (int)parse_long("--bos", val, 0, 1);
        else if (IS("--stop", "--stop")) a->stop = (int)parse_long("--stop", val, 0, 1);
#undef IS
    }
    return 0;
}

// ---------------------------------------------------------------------------------------
// streaming output

typedef struct {
    const Tokenizer *tok;
    int stop;
    int bos, eos;
    int n_printed;
} Printer;

static int print_token(int id, void *ctx) {
    Printer *p = (Printer *)ctx;
    if (p->stop && (id == p->bos || id == p->eos)) return 1;  // end of the document
    if (!tokenizer_is_special(p->tok, id)) {
        size_t len = 0;
        const char *bytes = tokenizer_token_bytes(p->tok, id, &len);
        if (bytes) fwrite(bytes, 1, len, stdout);
        else printf("<|id %d|>", id);  // an id of the model's padded vocabulary that the tokenizer lacks
        fflush(stdout);
    }
    p->n_printed++;
    return 0;
}

// Load the checkpoint into m (parameters and balancing biases; no optimizer state).
static int load_model(const SampleArgs *a, Model *m, char *path, size_t path_len, CkptTrainState *st) {
    SampleArgs d;
    args_default(&d);
    MoeErr err;
    ModelConfig cfg;
    // a run name / folder resolves to its newest checkpoint that validates
    if (ckpt_resolve(a->checkpoint, path, path_len, &err) != 0) {
        fprintf(stderr, "sample: %s%s\n", err.msg,
                strcmp(a->checkpoint, d.checkpoint) ? "" : " (train a model first: make train, or give -c)");
        return -1;
    }
    if (ckpt_read_header(path, &cfg, st, &err) != 0) {
        fprintf(stderr, "sample: %s\n", err.msg);
        return -1;
    }
    if (model_init(m, &cfg, 1, 1, 0, &err) != 0) {
        fprintf(stderr, "sample: checkpoint '%s': %s\n", path, err.msg);
        return -1;
    }
    if (ckpt_load(path, m, st, 0, &err) != 0) {
        fprintf(stderr, "sample: %s\n", err.msg);
        model_free(m);
        return -1;
    }
    return 0;
}

// The prompt's ids: BOS (when asked for and the tokenizer has one), then the encoded text.
// text/text_len receive the prompt text (file_text is the buffer to free when read from a file).
static int encode_prompt(const SampleArgs *a, Tokenizer *tok, TokIds *ids, const char **text, size_t *text_len,
                         char **file_text) {
    MoeErr err;
    *text = a->prompt;
    *text_len = strlen(a->prompt);
    if (a->prompt_file[0]) {
        if (read_file_all(a->prompt_file, file_text, text_len, &err) != 0) {
            fprintf(stderr, "sample: prompt file: %s\n", err.msg);
            return -1;
        }
        *text = *file_text;
    }
    int bos = tokenizer_bos_id(tok);
    if (a->bos && bos >= 0) {
        ids->cap = 16;
        ids->ids = (int32_t *)mallocCheck(sizeof(int32_t) * ids->cap);
        ids->ids[ids->n++] = bos;
    }
    if (tokenizer_encode(tok, *text, *text_len, 0, ids, &err) != 0) {
        fprintf(stderr, "sample: encoding the prompt: %s\n", err.msg);
        return -1;
    }
    if (ids->n == 0) {
        fprintf(stderr, "sample: the prompt is empty and there is no BOS token to start from (%s); give -p TEXT\n",
                a->bos ? "the tokenizer has none" : "--bos 0");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    SampleArgs a, d;
    args_default(&a);
    args_default(&d);
    if (parse_args(&a, argc, argv)) {
        usage(stdout);
        return 0;
    }
    MoeErr err;
    int rc = EXIT_FAILURE;
    char path[4096];
    CkptTrainState st;
    Model m;
    if (load_model(&a, &m, path, sizeof path, &st) != 0) return EXIT_FAILURE;
    const ModelConfig *cfg = &m.cfg;
    Tokenizer *tok = NULL;
    TokIds ids = {0};
    char *file_text = NULL;
    int *prompt_ids = NULL, *out = NULL;
    Generator g = {0};
    // tokenizer
    tok = tokenizer_load(a.tokenizer, &err);
    if (!tok) {
        fprintf(stderr, "sample: tokenizer: %s%s\n", err.msg,
                strcmp(a.tokenizer, d.tokenizer) ? "" : " (make data writes it, or give --tokenizer)");
        goto done;
    }
    int tv = tokenizer_vocab_size(tok);
    if (tv > cfg->vocab_size) {
        fprintf(stderr, "sample: tokenizer '%s' has %d tokens but the model of '%s' only %d: not the model's tokenizer\n",
                a.tokenizer, tv, path, cfg->vocab_size);
        goto done;
    }
    // prompt
    const char *text;
    size_t text_len;
    if (encode_prompt(&a, tok, &ids, &text, &text_len, &file_text) != 0) goto done;
    int T = cfg->max_seq_len;
    if (ids.n > (size_t)T) {
        fprintf(stderr, "sample: the prompt is %zu tokens, longer than the model's max_seq_len %d\n", ids.n, T);
        goto done;
    }
    int n_prompt = (int)ids.n;
    prompt_ids = (int *)mallocCheck(sizeof(int) * (size_t)n_prompt);
    for (int i = 0; i < n_prompt; i++) prompt_ids[i] = ids.ids[i];
    // the cache holds the prompt and the generated tokens but the last (sampled, never fed back)
    int room = T - n_prompt + 1, n_new = a.length;
    if (n_new > room) {
        if (!a.quiet)
            fprintf(stderr, "note: generating %d tokens instead of %d: the model's max_seq_len is %d and the prompt is %d\n",
                    room, n_new, T, n_prompt);
        n_new = room;
    }
    int cache_len = n_prompt + n_new - 1 > n_prompt ? n_prompt + n_new - 1 : n_prompt;
    if (gen_init(&g, &m, cache_len, &err) != 0) {
        fprintf(stderr, "sample: %s\n", err.msg);
        goto done;
    }
    if (!a.quiet) {
        GenCacheReport r;
        generate_cache_report(cfg, &r);
        fprintf(stderr, "checkpoint %s (step %lld, %zu parameters), tokenizer %s (%d tokens)\n", path,
                (long long)st.step, m.num_params, a.tokenizer, tv);
        generate_cache_report_print(&r, cache_len, stderr);
    }
    // the prompt as given (without BOS), then the continuation, streamed
    fwrite(text, 1, text_len, stdout);
    fflush(stdout);
    Printer pr = {tok, a.stop, tokenizer_bos_id(tok), tokenizer_eos_id(tok), 0};
    SampleOpts so = {a.temperature, a.top_k, a.top_p};
    out = (int *)mallocCheck(sizeof(int) * (size_t)n_new);
    double t0 = wall_seconds();
    int n = gen_generate(&g, prompt_ids, n_prompt, n_new, &so, a.seed, out, print_token, &pr, &err);
    double dt = wall_seconds() - t0;
    printf("\n");
    fflush(stdout);
    if (n < 0) {
        fprintf(stderr, "sample: %s\n", err.msg);
        goto done;
    }
    if (!a.quiet)
        fprintf(stderr,
                "%d prompt + %d generated tokens in %.2f s (%.1f tokens/s; temperature %g, top-k %d, top-p %g, seed %llu)\n",
                n_prompt, n, dt, dt > 0 ? (n_prompt + n) / dt : 0.0, a.temperature, a.top_k, a.top_p,
                (unsigned long long)a.seed);
    rc = 0;
done:
    free(out);
    free(prompt_ids);
    free(file_text);
    tok_ids_free(&ids);
    if (g.m) gen_free(&g);
    tokenizer_free(tok);
    model_free(&m);
    return rc;
}
