// collect: run a pretrained Hugging Face MoE model (4-bit NF4 on the CPU) over text and
// record every MoE layer's routing for every token into a .trace file (speculate/trace.h):
// the chosen top-K experts, their gate weights, and the gate-reuse prediction of the next
// MoE layer. Balanced sampling of N sequences per dataset; progress bar; expert-diversity
// metrics at the end.
//
//   collect --model DIR --data "imdb.jsonl:text news.csv:2 data/cache/default/val_000.bin"
//           --out traces/x.trace --n 100 --max-len 256 --batch 8
#include <ctype.h>
#include <libgen.h>
#include <math.h>
#include <omp.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../data/corpus.h"
#include "../data/shard.h"
#include "../speculate/trace.h"
#include "../tokenizer/tokenizer.h"
#include "ptmodel.h"

typedef struct {
    const char *model, *data, *out, *tokenizer, *name, *reuse, *quant;
    int n_per_dataset, max_len, min_len, batch, bos, double_quant, threads, plan_only, quiet;
    uint64_t seed;
} Args;

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: collect --model DIR [options]\n"
            "Runs a Hugging Face MoE model (deepseek, qwen2_moe, deepseek_v3; safetensors + config.json +\n"
            "tokenizer.json) in 4-bit on the CPU over text and writes routing traces.\n"
            "  --model DIR        model folder (required)\n"
            "  --data \"SPEC ...\"  datasets, space separated (default data/cache/default/val_000.bin). SPEC:\n"
            "                     [NAME=]FILE.jsonl[:FIELD] (default field text), [NAME=]FILE.csv|.tsv[:COLUMN]\n"
            "                     (1-based number or header name), [NAME=]FILE.txt or DIR (one document per\n"
            "                     blank-line paragraph), SHARD.bin (token shard; each domain is a dataset,\n"
            "                     re-tokenized through the shard folder's tokenizer.json when it has one)\n"
            "  --out FILE         trace file (default traces/collect.trace)\n"
            "  --n N              sequences per dataset, balanced (default 100)\n"
            "  --max-len T        tokens per sequence at most (default 256)\n"
            "  --min-len T        shorter documents are skipped (default 8)\n"
            "  --batch B          sequences per forward pass (default 8)\n"
            "  --quant Q          nf4 | none (fp32 weights) (default nf4)\n"
            "  --double-quant 0|1 double-quantize the NF4 absmax (default 1)\n"
            "  --reuse R          gate-reuse state: mid (entering the MoE FFN) | out (layer output) | none (default mid)\n"
            "  --tokenizer FILE   (default DIR/tokenizer.json)\n"
            "  --bos 0|1          prepend the config's bos_token_id (default 1)\n"
            "  --name NAME        model name in the trace header (default: the folder name)\n"
            "  --seed S           sampling seed (default 1)\n"
            "  --threads N        OpenMP threads (default: OMP_NUM_THREADS or all cores)\n"
            "  --plan             print the memory plan from config.json and exit\n"
            "  --quiet            no progress bar\n"
            "  -h, --help         this help\n");
}

#define DIE(...)                              \
    do {                                      \
        fprintf(stderr, "collect: error: ");  \
        fprintf(stderr, __VA_ARGS__);         \
        fprintf(stderr, "\n");                \
        exit(EXIT_FAILURE);                   \
    } while (0)

static int parse_int(const char *flag, const char *v, int lo, int hi) {
    char *end;
    long x = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || x < lo || x > hi) DIE("%s %s: expected an integer in [%d, %d]", flag, v, lo, hi);
    return (int)x;
}

static void parse_args(int argc, char **argv, Args *a) {
    memset(a, 0, sizeof(*a));
    a->data = "data/cache/default/val_000.bin";
    a->out = "traces/collect.trace";
    a->reuse = "mid";
    a->quant = "nf4";
    a->n_per_dataset = 100;
    a->max_len = 256;
    a->min_len = 8;
    a->batch = 8;
    a->bos = 1;
    a->double_quant = 1;
    a->seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) { usage(stdout); exit(0); }
        if (!strcmp(f, "--plan")) { a->plan_only = 1; continue; }
        if (!strcmp(f, "--quiet")) { a->quiet = 1; continue; }
        if (i + 1 >= argc) {
            usage(stderr);
            DIE("%s needs a value (or is unknown)", f);
        }
        const char *v = argv[++i];
        if (!strcmp(f, "--model")) a->model = v;
        else if (!strcmp(f, "--data")) a->data = v;
        else if (!strcmp(f, "--out")) a->out = v;
        else if (!strcmp(f, "--tokenizer")) a->tokenizer = v;
        else if (!strcmp(f, "--name")) a->name = v;
        else if (!strcmp(f, "--reuse")) a->reuse = v;
        else if (!strcmp(f, "--quant")) a->quant = v;
        else if (!strcmp(f, "--n")) a->n_per_dataset = parse_int(f, v, 1, 100000000);
        else if (!strcmp(f, "--max-len")) a->max_len = parse_int(f, v, 1, 1 << 20);
        else if (!strcmp(f, "--min-len")) a->min_len = parse_int(f, v, 1, 1 << 20);
        else if (!strcmp(f, "--batch")) a->batch = parse_int(f, v, 1, 1 << 16);
        else if (!strcmp(f, "--bos")) a->bos = parse_int(f, v, 0, 1);
        else if (!strcmp(f, "--double-quant")) a->double_quant = parse_int(f, v, 0, 1);
        else if (!strcmp(f, "--threads")) a->threads = parse_int(f, v, 1, 4096);
        else if (!strcmp(f, "--seed")) a->seed = (uint64_t)parse_int(f, v, 0, 2000000000);
        else {
            usage(stderr);
            DIE("unknown flag %s", f);
        }
    }
    if (!a->model) {
        usage(stderr);
        DIE("--model DIR is required");
    }
    if (strcmp(a->reuse, "mid") && strcmp(a->reuse, "out") && strcmp(a->reuse, "none"))
        DIE("--reuse %s: expected mid, out or none", a->reuse);
    if (strcmp(a->quant, "nf4") && strcmp(a->quant, "none")) DIE("--quant %s: expected nf4 or none", a->quant);
    if (a->min_len > a->max_len) DIE("--min-len %d exceeds --max-len %d", a->min_len, a->max_len);
}

// ---------------------------------------------------------------------------------------
// Documents and datasets

typedef struct {
    int ds;               // dataset index
    const char *text;     // text document (corpus), or NULL for a shard document
    size_t len;
    const Shard *sh;      // shard document: tokens [t0, t1)
    Tokenizer *sh_tok;    // the shard's tokenizer (re-tokenize), or NULL (ids used directly)
    int64_t t0, t1;
} Doc;

typedef struct {
    Doc *docs;
    int64_t n, cap;
    char names[TRACE_MAX_DOMAINS][TRACE_DOMAIN_LEN];
    int n_ds;
    Corpus corpus;
    Shard shards[64];
    Tokenizer *shard_toks[64];
    int n_shards;
} Pool;

static int pool_dataset(Pool *p, const char *name) {
    for (int i = 0; i < p->n_ds; i++)
        if (!strcmp(p->names[i], name)) return i;
    if (p->n_ds >= TRACE_MAX_DOMAINS) DIE("more than %d datasets", TRACE_MAX_DOMAINS);
    snprintf(p->names[p->n_ds], TRACE_DOMAIN_LEN, "%.31s", name);
    return p->n_ds++;
}

static void pool_add(Pool *p, Doc d) {
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 1024;
        p->docs = (Doc *)realloc(p->docs, (size_t)p->cap * sizeof(Doc));
        if (!p->docs) DIE("out of memory");
    }
    p->docs[p->n++] = d;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

// dataset name from a path: basename without extension, [A-Za-z0-9_.-] only
static void name_from_path(const char *path, char *out, size_t n) {
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s", path);
    char *colon = strrchr(buf, ':');
    struct stat st;
    if (colon && stat(buf, &st) != 0) *colon = 0;
    const char *b = basename(buf);
    size_t k = 0;
    for (const char *c = b; *c && *c != '.' && k + 1 < n && k < 31; c++)
        out[k++] = (isalnum((unsigned char)*c) || *c == '_' || *c == '-') ? *c : '_';
    if (k == 0) out[k++] = 'd';
    out[k] = 0;
}

static void load_sources(Pool *p, const char *spec_list, const char *model_tok_path) {
    char *specs = strdup(spec_list);
    MoeErr err;
    ReadOptions ro;
    read_options_default(&ro);
    ro.text_unit = TEXT_UNIT_PARAGRAPH;
    for (char *save = NULL, *s = strtok_r(specs, " \t\n", &save); s; s = strtok_r(NULL, " \t\n", &save)) {
        const char *eq = strchr(s, '=');
        const char *path = eq ? eq + 1 : s;
        if (ends_with(path, ".bin")) {
            if (p->n_shards >= 64) DIE("too many shards");
            Shard *sh = &p->shards[p->n_shards];
            if (shard_open(sh, path, &err) != 0) DIE("%s", err.msg);
            // the shard's own tokenizer, for re-tokenizing with the model's
            char tp[4200], dirb[4096];
            snprintf(dirb, sizeof(dirb), "%s", path);
            snprintf(tp, sizeof(tp), "%s/tokenizer.json", dirname(dirb));
            Tokenizer *st = NULL;
            if (file_exists(tp) && file_exists(model_tok_path)) {
                st = tokenizer_load(tp, &err);
                if (!st) DIE("%s", err.msg);
            } else if (file_exists(model_tok_path)) {
                fprintf(stderr, "collect: warning: %s has no tokenizer.json beside it: its token ids are fed to the model "
                                "as they are (right only if the shard was made with the model's tokenizer)\n", path);
            }
            p->shard_toks[p->n_shards++] = st;
            for (int64_t d = 0; d < sh->n_docs; d++) {
                int dom = sh->doc_domain[d];
                char nm[64];
                if (eq) snprintf(nm, sizeof(nm), "%.*s", (int)(eq - s), s);
                else snprintf(nm, sizeof(nm), "%s", sh->domain_names[dom]);
                Doc doc = {pool_dataset(p, nm), NULL, 0, sh, st, sh->doc_start[d],
                           d + 1 < sh->n_docs ? sh->doc_start[d + 1] : sh->n_tokens};
                pool_add(p, doc);
            }
            continue;
        }
        char nm[64], full[4400];
        if (eq) snprintf(nm, sizeof(nm), "%.*s", (int)(eq - s), s);
        else name_from_path(path, nm, sizeof(nm));
        pool_dataset(p, nm);  // datasets keep the order of --data
        snprintf(full, sizeof(full), "%s=%s", nm, path);
        if (corpus_read_input(&p->corpus, full, &ro, &err) != 0) DIE("%s", err.msg);
    }
    // text documents (corpus arrays are final now, pointers stay valid)
    for (int64_t i = 0; i < p->corpus.n_docs; i++) {
        const CorpusDoc *cd = &p->corpus.docs[i];
        Doc doc = {pool_dataset(p, p->corpus.domains[cd->domain]), cd->text, cd->len, NULL, NULL, 0, 0};
        pool_add(p, doc);
    }
    free(specs);
}

// tokens of a document with the model tokenizer (appended after an optional BOS), truncated
static int doc_tokens(const Doc *d, Tokenizer *tok, int bos, int max_len, int vocab, TokIds *ids) {
    MoeErr err;
    ids->n = 0;
    if (bos >= 0) {
        if (ids->cap < 1) {
            ids->ids = (int32_t *)realloc(ids->ids, 64 * sizeof(int32_t));
            ids->cap = 64;
        }
        ids->ids[ids->n++] = bos;
    }
    if (d->text || d->sh_tok) {
        if (!tok) DIE("a tokenizer.json is needed for text datasets (--tokenizer)");
        const char *text = d->text;
        size_t len = d->len;
        char *dec = NULL;
        if (!text) {  // shard document through its own tokenizer
            int64_t n = d->t1 - d->t0;
            if (n > 8 * (int64_t)max_len) n = 8 * (int64_t)max_len;  // enough text for max_len tokens
            int32_t *t = (int32_t *)malloc((size_t)(n + 1) * sizeof(int32_t));
            for (int64_t i = 0; i < n; i++) t[i] = (int32_t)shard_token(d->sh, d->t0 + i);
            if (tokenizer_decode(d->sh_tok, t, (size_t)n, 1, &dec, &len, &err) != 0) DIE("shard decode: %s", err.msg);
            free(t);
            text = dec;
        }
        if (len > (size_t)max_len * 16) len = (size_t)max_len * 16;  // bytes enough for max_len tokens
        if (tokenizer_encode(tok, text, len, 0, ids, &err) != 0) DIE("%s", err.msg);
        free(dec);
    } else {
        for (int64_t i = d->t0; i < d->t1 && (int)ids->n < max_len; i++) {
            uint32_t t = shard_token(d->sh, i);
            if ((int)t >= vocab) DIE("%s: token id %u >= the model's vocabulary %d (give the shard folder a tokenizer.json)",
                                     d->sh->path, t, vocab);
            if (ids->n == ids->cap) {
                ids->cap = ids->cap ? 2 * ids->cap : 256;
                ids->ids = (int32_t *)realloc(ids->ids, ids->cap * sizeof(int32_t));
            }
            ids->ids[ids->n++] = (int32_t)t;
        }
    }
    for (size_t i = 0; i < ids->n; i++)
        if (ids->ids[i] < 0 || ids->ids[i] >= vocab) DIE("tokenizer id %d >= the model's vocabulary %d", ids->ids[i], vocab);
    if ((int)ids->n > max_len) ids->n = (size_t)max_len;
    return (int)ids->n;
}

// ---------------------------------------------------------------------------------------
// Diversity metrics

typedef struct {
    double *load;      // (E)
    uint64_t *set;     // open addressing table of set hashes (0 = empty)
    int64_t set_cap, set_n;
    int64_t reuse_hit, reuse_tot;
    double gate_entropy;  // sum over tokens of the entropy of the chosen weights normalised
} LayerStats;

static void set_insert(LayerStats *s, uint64_t h) {
    if (h == 0) h = 1;
    if (2 * (s->set_n + 1) > s->set_cap) {
        int64_t cap = s->set_cap ? 2 * s->set_cap : 1024;
        uint64_t *t = (uint64_t *)calloc((size_t)cap, sizeof(uint64_t));
        if (!t) DIE("out of memory");
        for (int64_t i = 0; i < s->set_cap; i++)
            if (s->set[i]) {
                int64_t j = (int64_t)(s->set[i] % (uint64_t)cap);
                while (t[j]) j = (j + 1) % cap;
                t[j] = s->set[i];
            }
        free(s->set);
        s->set = t;
        s->set_cap = cap;
    }
    int64_t j = (int64_t)(h % (uint64_t)s->set_cap);
    while (s->set[j]) {
        if (s->set[j] == h) return;
        j = (j + 1) % s->set_cap;
    }
    s->set[j] = h;
    s->set_n++;
}

static uint64_t hash_set(const int32_t *ids, int K) {
    int32_t s[64];
    memcpy(s, ids, (size_t)K * sizeof(int32_t));
    for (int a = 0; a < K; a++)
        for (int b = a + 1; b < K; b++)
            if (s[b] < s[a]) { int32_t t = s[a]; s[a] = s[b]; s[b] = t; }
    uint64_t h = 1469598103934665603ULL;
    for (int k = 0; k < K; k++) h = (h ^ (uint64_t)(s[k] + 1)) * 1099511628211ULL;
    return h;
}

static void fmt_time(double s, char *out, size_t n) {
    if (!(s >= 0) || s > 1e7) snprintf(out, n, "--");
    else if (s < 60) snprintf(out, n, "%.0fs", s);
    else if (s < 3600) snprintf(out, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(out, n, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

static double peak_rss_mb(void) {
    FILE *fp = fopen("/proc/self/status", "r");
    if (!fp) return 0;
    char line[256];
    double mb = 0;
    while (fgets(line, sizeof(line), fp))
        if (!strncmp(line, "VmHWM:", 6)) mb = atof(line + 6) / 1024.0;
    fclose(fp);
    return mb;
}

int main(int argc, char **argv) {
    Args a;
    parse_args(argc, argv, &a);
    if (a.threads > 0) omp_set_num_threads(a.threads);
    MoeErr err;
    PtConfig cfg;
    if (pt_config_load(&cfg, a.model, &err) != 0) DIE("%s", err.msg);
    int quant = strcmp(a.quant, "nf4") == 0 ? PT_QUANT_NF4 : PT_QUANT_NONE;
    PtPlan plan;
    pt_plan(&cfg, quant, a.double_quant, pt_config_emb_bytes(a.model), &plan);
    char title[200];
    snprintf(title, sizeof(title), "memory plan (%s%s)", a.quant, quant == PT_QUANT_NF4 && a.double_quant ? " + double quant" : "");
    pt_plan_print(&cfg, &plan, title, stdout);
    printf("  activations for one batch of %d x %d tokens: %.1f MB\n", a.batch, a.max_len,
           (double)pt_work_bytes(&cfg, (int64_t)a.batch * a.max_len, a.max_len) / 1e6);
    if (a.plan_only) return 0;
    if (cfg.n_moe_layers < 1) DIE("%s/config.json: the model has no MoE layer", a.model);

    // tokenizer + data
    char tok_path[4200];
    snprintf(tok_path, sizeof(tok_path), "%s", a.tokenizer ? a.tokenizer : "");
    if (!a.tokenizer) snprintf(tok_path, sizeof(tok_path), "%s/tokenizer.json", a.model);
    Tokenizer *tok = NULL;
    if (file_exists(tok_path)) {
        tok = tokenizer_load(tok_path, &err);
        if (!tok) DIE("%s", err.msg);
    } else if (a.tokenizer) {
        DIE("%s: no such tokenizer file", tok_path);
    }
    Pool pool;
    memset(&pool, 0, sizeof(pool));
    load_sources(&pool, a.data, tok_path);
    if (pool.n_ds == 0 || pool.n == 0) DIE("--data \"%s\": no documents", a.data);

    // balanced sampling: shuffle each dataset's documents, keep the first N long enough
    int bos = a.bos ? cfg.bos_token_id : -1;
    if (bos >= cfg.vocab_size) bos = -1;
    int64_t max_seqs = (int64_t)pool.n_ds * a.n_per_dataset;
    int32_t **seq_tok = (int32_t **)calloc((size_t)max_seqs, sizeof(int32_t *));
    int *seq_len = (int *)calloc((size_t)max_seqs, sizeof(int));
    int *seq_ds = (int *)calloc((size_t)max_seqs, sizeof(int));
    int64_t n_seq = 0;
    int64_t *idx = (int64_t *)malloc((size_t)pool.n * sizeof(int64_t));
    if (!seq_tok || !seq_len || !seq_ds || !idx) DIE("out of memory");
    uint64_t rng = rng_seed(a.seed);
    TokIds ids = {0};
    int64_t per_ds_count[TRACE_MAX_DOMAINS] = {0};
    for (int ds = 0; ds < pool.n_ds; ds++) {
        int64_t m = 0;
        for (int64_t i = 0; i < pool.n; i++)
            if (pool.docs[i].ds == ds) idx[m++] = i;
        for (int64_t i = m - 1; i > 0; i--) {
            int64_t j = (int64_t)(rng_next_u64(&rng) % (uint64_t)(i + 1));
            int64_t t = idx[i]; idx[i] = idx[j]; idx[j] = t;
        }
        int got = 0;
        for (int64_t i = 0; i < m && got < a.n_per_dataset; i++) {
            int len = doc_tokens(&pool.docs[idx[i]], tok, bos, a.max_len, cfg.vocab_size, &ids);
            if (len < a.min_len) continue;
            seq_tok[n_seq] = (int32_t *)malloc((size_t)len * sizeof(int32_t));
            if (!seq_tok[n_seq]) DIE("out of memory");
            memcpy(seq_tok[n_seq], ids.ids, (size_t)len * sizeof(int32_t));
            seq_len[n_seq] = len;
            seq_ds[n_seq] = ds;
            n_seq++;
            got++;
        }
        per_ds_count[ds] = got;
        if (got < a.n_per_dataset)
            fprintf(stderr, "collect: warning: dataset '%s' has only %d documents of >= %d tokens (asked %d)\n",
                    pool.names[ds], got, a.min_len, a.n_per_dataset);
    }
    tok_ids_free(&ids);
    free(idx);
    if (n_seq == 0) DIE("no sequence of at least %d tokens in the datasets", a.min_len);
    // interleave datasets (round robin) so that every batch mixes them
    int64_t *order = (int64_t *)malloc((size_t)n_seq * sizeof(int64_t));
    {
        int64_t k = 0, start[TRACE_MAX_DOMAINS + 1] = {0};
        for (int ds = 0; ds < pool.n_ds; ds++) start[ds + 1] = start[ds] + per_ds_count[ds];
        for (int64_t r = 0; k < n_seq; r++)
            for (int ds = 0; ds < pool.n_ds; ds++)
                if (r < per_ds_count[ds]) order[k++] = start[ds] + r;
    }
    int64_t total_tokens = 0;
    for (int64_t s = 0; s < n_seq; s++) total_tokens += seq_len[s];
    printf("data: %d datasets, %lld sequences, %lld tokens (max length %d)\n", pool.n_ds, (long long)n_seq,
           (long long)total_tokens, a.max_len);
    for (int ds = 0; ds < pool.n_ds; ds++) printf("  %-24s %6lld sequences\n", pool.names[ds], (long long)per_ds_count[ds]);

    // model
    PtModel m;
    PtLoadOptions lo = {quant, a.double_quant, !a.quiet};
    double t_load = wall_seconds();
    if (pt_model_load(&m, a.model, &lo, &err) != 0) DIE("%s", err.msg);
    printf("loaded %s in %.1f s: %.1f MB of weights held (%d tensors already in bitsandbytes 4-bit form), peak RSS %.0f MB\n",
           a.model, wall_seconds() - t_load, (double)m.loaded.total_bytes / 1e6, m.n_bnb, peak_rss_mb());

    // trace header
    const int M = cfg.n_moe_layers, K = cfg.top_k, E = cfg.n_routed_experts;
    int reuse_mode = !strcmp(a.reuse, "out") ? PT_REUSE_OUT : PT_REUSE_MID;
    int with_reuse = strcmp(a.reuse, "none") != 0 && M >= 2;
    if (M > TRACE_MAX_LAYERS || K > TRACE_MAX_K || E > 65535) DIE("model too large for the trace format");
    TraceHeader h;
    memset(&h, 0, sizeof(h));
    char mdir[4096];
    snprintf(mdir, sizeof(mdir), "%s", a.model);
    while (strlen(mdir) > 1 && mdir[strlen(mdir) - 1] == '/') mdir[strlen(mdir) - 1] = 0;
    snprintf(h.model, sizeof(h.model), "%.63s", a.name ? a.name : basename(mdir));
    size_t dl = 0;
    for (int ds = 0; ds < pool.n_ds && dl + 2 < sizeof(h.dataset); ds++)
        dl += (size_t)snprintf(h.dataset + dl, sizeof(h.dataset) - dl, "%s%s", ds ? "," : "", pool.names[ds]);
    h.E = E;
    h.K = K;
    h.n_layers = M;
    h.has_reuse = with_reuse;
    h.n_domains = pool.n_ds;
    int mi = 0;
    for (int l = 0; l < cfg.n_layers; l++)
        if (cfg.is_moe[l]) h.layer_idx[mi++] = l;
    for (int ds = 0; ds < pool.n_ds; ds++) snprintf(h.domains[ds], TRACE_DOMAIN_LEN, "%s", pool.names[ds]);
    {
        char od[4096];
        snprintf(od, sizeof(od), "%s", a.out);
        char *d = dirname(od);
        if (strcmp(d, ".") && make_dirs(d, &err) != 0) DIE("%s", err.msg);
    }
    TraceWriter *tw = trace_writer_open(a.out, &h, &err);
    if (!tw) DIE("%s", err.msg);

    // run
    LayerStats *st = (LayerStats *)calloc((size_t)M, sizeof(LayerStats));
    for (int l = 0; l < M; l++) st[l].load = (double *)calloc((size_t)E, sizeof(double));
    int64_t *ss = (int64_t *)malloc((size_t)(a.batch + 1) * sizeof(int64_t));
    int32_t *btok = (int32_t *)malloc((size_t)a.batch * a.max_len * sizeof(int32_t));
    uint16_t *rid = (uint16_t *)malloc((size_t)M * K * sizeof(uint16_t));
    float *rw = (float *)malloc((size_t)M * K * sizeof(float));
    uint16_t *rre = (uint16_t *)malloc((size_t)(M > 1 ? M - 1 : 1) * K * sizeof(uint16_t));
    PtRouting rt;
    if (pt_routing_alloc(&rt, &m, (int64_t)a.batch * a.max_len, 0, &err) != 0) DIE("%s", err.msg);
    double t0 = wall_seconds();
    int64_t done_seq = 0, done_tok = 0;
    for (int64_t b0 = 0; b0 < n_seq; b0 += a.batch) {
        int nb = (int)(n_seq - b0 < a.batch ? n_seq - b0 : a.batch);
        ss[0] = 0;
        for (int j = 0; j < nb; j++) {
            int64_t s = order[b0 + j];
            memcpy(btok + ss[j], seq_tok[s], (size_t)seq_len[s] * sizeof(int32_t));
            ss[j + 1] = ss[j] + seq_len[s];
        }
        int64_t N = ss[nb];
        if (pt_forward(&m, btok, ss, nb, NULL, &rt, reuse_mode, &err) != 0) {
            trace_writer_abort(tw);
            DIE("%s", err.msg);
        }
        for (int j = 0; j < nb; j++) {
            int64_t s = order[b0 + j];
            for (int64_t i = ss[j]; i < ss[j + 1]; i++) {
                for (int l = 0; l < M; l++) {
                    const int32_t *id = rt.ids + ((size_t)l * N + i) * K;
                    const float *w = rt.w + ((size_t)l * N + i) * K;
                    double wsum = 0, ent = 0;
                    for (int k = 0; k < K; k++) {
                        rid[l * K + k] = (uint16_t)id[k];
                        rw[l * K + k] = w[k];
                        st[l].load[id[k]] += 1;
                        wsum += w[k];
                    }
                    for (int k = 0; k < K; k++)
                        if (w[k] > 0 && wsum > 0) ent -= (w[k] / wsum) * log(w[k] / wsum);
                    st[l].gate_entropy += ent;
                    set_insert(&st[l], hash_set(id, K));
                    if (with_reuse && l + 1 < M) {
                        const int32_t *re = rt.reuse + ((size_t)l * N + i) * K;
                        const int32_t *nx = rt.ids + ((size_t)(l + 1) * N + i) * K;
                        for (int k = 0; k < K; k++) {
                            rre[l * K + k] = (uint16_t)re[k];
                            for (int k2 = 0; k2 < K; k2++) st[l].reuse_hit += re[k] == nx[k2];
                        }
                        st[l].reuse_tot += K;
                    }
                }
                if (trace_writer_append(tw, (uint32_t)s, (uint32_t)(i - ss[j]), (uint32_t)btok[i], (uint16_t)seq_ds[s], rid,
                                        rw, with_reuse ? rre : NULL, &err) != 0) {
                    trace_writer_abort(tw);
                    DIE("%s", err.msg);
                }
            }
        }
        done_seq += nb;
        done_tok += N;
        if (!a.quiet) {
            double el = wall_seconds() - t0;
            double per_min = el > 0 ? 60.0 * done_seq / el : 0;
            char eta[32], elb[32];
            fmt_time(el / (double)done_tok * (double)(total_tokens - done_tok), eta, sizeof(eta));
            fmt_time(el, elb, sizeof(elb));
            int width = 30, fill = (int)(width * done_seq / n_seq);
            char bar[64];
            for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
            bar[width] = 0;
            fprintf(stderr, "\r[%s] %lld/%lld traces | %lld tokens | %.1f traces/min | %.0f tok/s | %s elapsed | %s left  ",
                    bar, (long long)done_seq, (long long)n_seq, (long long)done_tok, per_min, el > 0 ? done_tok / el : 0.0,
                    elb, eta);
            fflush(stderr);
        }
    }
    if (!a.quiet) fprintf(stderr, "\n");
    double el = wall_seconds() - t0;
    uint64_t n_rec = trace_writer_count(tw);
    if (trace_writer_close(tw, &err) != 0) DIE("%s", err.msg);
    printf("wrote %s: %lld sequences, %llu token records in %.1f s (%.1f traces/min, %.0f tokens/s), peak RSS %.0f MB\n",
           a.out, (long long)n_seq, (unsigned long long)n_rec, el, el > 0 ? 60.0 * n_seq / el : 0.0,
           el > 0 ? done_tok / el : 0.0, peak_rss_mb());

    // expert diversity
    printf("expert diversity (%lld tokens, top-%d of %d experts):\n", (long long)done_tok, K, E);
    printf("  %5s %8s %14s %22s %18s %16s\n", "layer", "used/E", "distinct sets", "usage entropy (bits)", "gate entropy (nats)",
           with_reuse ? "reuse recall@K" : "");
    double s_used = 0, s_sets = 0, s_ent = 0, s_gent = 0, s_rec = 0;
    int n_rec_l = 0;
    for (int l = 0; l < M; l++) {
        double tot = 0, ent = 0;
        int used = 0;
        for (int e = 0; e < E; e++) tot += st[l].load[e];
        for (int e = 0; e < E; e++)
            if (st[l].load[e] > 0) {
                used++;
                double p = st[l].load[e] / tot;
                ent -= p * log2(p);
            }
        double gent = done_tok ? st[l].gate_entropy / done_tok : 0;
        char rec[32] = "";
        if (with_reuse && l + 1 < M && st[l].reuse_tot) {
            double r = (double)st[l].reuse_hit / st[l].reuse_tot;
            snprintf(rec, sizeof(rec), "%.3f", r);
            s_rec += r;
            n_rec_l++;
        }
        printf("  %5d %4d/%-3d %14lld %15.3f / %.2f %18.3f %16s\n", h.layer_idx[l], used, E, (long long)st[l].set_n, ent,
               log2((double)E), gent, rec);
        s_used += used;
        s_sets += (double)st[l].set_n;
        s_ent += ent;
        s_gent += gent;
    }
    printf("  %5s %8.1f %14.1f %22.3f %18.3f %16s\n", "mean", s_used / M, s_sets / M, s_ent / M, s_gent / M, "");
    if (n_rec_l) printf("  gate reuse (%s state): mean recall@%d of the next MoE layer's experts %.3f (random %.3f)\n",
                        a.reuse, K, s_rec / n_rec_l, (double)K / E);
    for (int l = 0; l < M; l++) {
        free(st[l].load);
        free(st[l].set);
    }
    free(st);
    pt_routing_free(&rt);
    free(ss); free(btok); free(rid); free(rw); free(rre); free(order);
    for (int64_t s = 0; s < n_seq; s++) free(seq_tok[s]);
    free(seq_tok); free(seq_len); free(seq_ds);
    pt_model_free(&m);
    for (int i = 0; i < pool.n_shards; i++) {
        shard_close(&pool.shards[i]);
        if (pool.shard_toks[i]) tokenizer_free(pool.shard_toks[i]);
    }
    corpus_free(&pool.corpus);
    free(pool.docs);
    if (tok) tokenizer_free(tok);
    return 0;
}
