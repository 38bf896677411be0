// prepare: corpus -> tokenizer -> token shards.
//
//   sources (built-in Debian packages and/or user files, each a named domain)
//     -> text documents -> per-domain cap (deterministic sample) -> train/val split by
//     document (1 in --val-every per domain) -> byte-level BPE trained on the train split
//     (or --tokenizer FILE) -> <out>/train_NNN.bin, val_000.bin, tokenizer.json, meta.json
//
// Each document is encoded on its own and preceded by the tokenizer's begin-of-text token
// (when it has one). meta.json is written last: its presence means the folder is complete.
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <errno.h>
#include <glob.h>
#include <omp.h>
#include <unistd.h>

#include "../common/util.h"
#include "../tokenizer/tokenizer.h"
#include "corpus.h"
#include "shard.h"

#define MAX_INPUTS 256

typedef struct {
    int builtin;
    const char *inputs[MAX_INPUTS];
    int n_inputs;
    const char *name;
    const char *out;
    int vocab;
    const char *tokenizer;
    const char *pattern;
    int val_every;
    double builtin_cap_mb;
    double cap_mb;
    int token_bytes;
    int64_t shard_tokens;
    int text_unit;
    int csv_header;
    int skip_bad;
    const char *dump;
    const char *bible;
    const char *dictd_dir;
    const char *include_dir;
    int threads;
    int verify;
    int quiet;
    int inspect;  // argv index of the first --inspect file, 0: none
} Args;

static void usage(FILE *f) {
    fprintf(f,
            "usage: prepare [options]\n"
            "Builds token shards from text: sources -> documents with domains -> train/val split -> tokenizer\n"
            "-> <out>/train_000.bin ... val_000.bin, tokenizer.json, meta.json.\n"
            "\n"
            "sources (at least one):\n"
            "  --builtin               the built-in five-domain corpus: bible (bible-kjv), gcide (dict-gcide),\n"
            "                          jargon (dict-jargon), foldoc (dict-foldoc), code (C headers)  [off]\n"
            "  --input DOMAIN=PATH[:FIELD]   user data, repeatable (up to %d); DOMAIN: 1-31 of [A-Za-z0-9_.-].\n"
            "                          By the file's extension:\n"
            "                          .jsonl/.ndjson/.json  JSON Lines (or one JSON array of objects); FIELD =\n"
            "                                                the string member (default text; a.b if nested)\n"
            "                          .csv / .tsv           FIELD = the column: a 1-based number or a header\n"
            "                                                name (default text)\n"
            "                          other files           plain text (see --text-unit)\n"
            "                          a directory           every regular file in it, as plain text\n"
            "\n"
            "output:\n"
            "  --name NAME             corpus name  [default]\n"
            "  --out DIR               output folder  [data/cache/NAME]\n"
            "  --shard-tokens N        max tokens per train shard (documents are not split)  [100000000]\n"
            "  --token-bytes N         token id width in shards: 2 (uint16, vocab <= 65535), 4, 0 = auto  [0]\n"
            "  --dump FILE             also write the extracted documents as text (for inspection)  [none]\n"
            "\n"
            "tokenizer:\n"
            "  --tokenizer FILE        use this Hugging Face tokenizer.json instead of training one  [none]\n"
            "  --vocab N               vocabulary size of the trained tokenizer (with 3 special tokens)  [8192]\n"
            "  --pattern P             pre-split: gpt4 | gpt2 | qwen | deepseek | a PCRE2 regex  [gpt4]\n"
            "\n"
            "documents:\n"
            "  --val-every N           1 document in N of each domain goes to validation (0: none)  [20]\n"
            "  --builtin-cap MB        cap each built-in domain at about MB megabytes (0: no cap)  [5]\n"
            "  --cap MB                cap each user domain at about MB megabytes (0: no cap)  [0]\n"
            "  --text-unit U           plain text documents: file | paragraph (blank-line separated) | line  [file]\n"
            "  --no-header             CSV/TSV files have no header row (columns by number only)  [header]\n"
            "  --skip-bad              skip (and count) JSONL lines / CSV rows that are bad instead of failing  [off]\n"
            "\n"
            "built-in source locations:\n"
            "  --bible PATH            the bible program  [/usr/bin/bible]\n"
            "  --dictd DIR             dictd databases  [/usr/share/dictd]\n"
            "  --include DIR           C headers  [/usr/include]\n"
            "\n"
            "  --threads N             encoding threads (0: OpenMP default)  [0]\n"
            "  --no-verify             skip the check that every document decodes back to its exact bytes  [verify]\n"
            "  --inspect FILE...       only validate and describe existing shards (header, domains, tokens)\n"
            "  -q                      quiet: errors only\n"
            "  -h, --help              this help\n",
            MAX_INPUTS);
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(EXIT_FAILURE);
}

static long long parse_int(const char *flag, const char *v, long long lo, long long hi) {
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end != '\0' || x < lo || x > hi)
        die("%s: '%s' is not an integer in [%lld, %lld]", flag, v, lo, hi);
    return x;
}
static double parse_double(const char *flag, const char *v, double lo, double hi) {
    char *end = NULL;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end != '\0' || !(x >= lo && x <= hi))
        die("%s: '%s' is not a number in [%g, %g]", flag, v, lo, hi);
    return x;
}

static void parse_args(int argc, char **argv, Args *a) {
    memset(a, 0, sizeof(*a));
    a->name = "default";
    a->vocab = 8192;
    a->pattern = "gpt4";
    a->val_every = 20;
    a->builtin_cap_mb = 5.0;
    a->verify = 1;
    a->cap_mb = 0.0;
    a->shard_tokens = 100000000;
    a->csv_header = 1;
    a->bible = "/usr/bin/bible";
    a->dictd_dir = "/usr/share/dictd";
    a->include_dir = "/usr/include";
    for (int i = 1; i < argc; i++) {
        char *arg = argv[i];
        const char *val = NULL;
        // --flag=value
        char *eq = (strncmp(arg, "--", 2) == 0) ? strchr(arg, '=') : NULL;
        char flag[128];
        if (eq && (size_t)(eq - arg) < sizeof(flag)) {
            memcpy(flag, arg, (size_t)(eq - arg));
            flag[eq - arg] = '\0';
            val = eq + 1;
        } else {
            snprintf(flag, sizeof(flag), "%s", arg);
        }
#define NEEDVAL()                                                       \
    do {                                                                \
        if (!val) {                                                     \
            if (i + 1 >= argc) die("%s needs a value (see -h)", flag); \
            val = argv[++i];                                            \
        }                                                               \
    } while (0)
#define NOVAL() \
    if (val) die("%s takes no value", flag)
        if (!strcmp(flag, "-h") || !strcmp(flag, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(flag, "--builtin")) {
            NOVAL();
            a->builtin = 1;
        } else if (!strcmp(flag, "--input")) {
            NEEDVAL();
            if (a->n_inputs >= MAX_INPUTS) die("too many --input (max %d)", MAX_INPUTS);
            a->inputs[a->n_inputs++] = val;
        } else if (!strcmp(flag, "--name")) {
            NEEDVAL();
            a->name = val;
        } else if (!strcmp(flag, "--out")) {
            NEEDVAL();
            a->out = val;
        } else if (!strcmp(flag, "--vocab")) {
            NEEDVAL();
            a->vocab = (int)parse_int(flag, val, 260, 1 << 30);
        } else if (!strcmp(flag, "--tokenizer")) {
            NEEDVAL();
            a->tokenizer = val;
        } else if (!strcmp(flag, "--pattern")) {
            NEEDVAL();
            a->pattern = val;
        } else if (!strcmp(flag, "--val-every")) {
            NEEDVAL();
            a->val_every = (int)parse_int(flag, val, 0, 1 << 30);
            if (a->val_every == 1) die("--val-every 1 would put every document in validation");
        } else if (!strcmp(flag, "--builtin-cap")) {
            NEEDVAL();
            a->builtin_cap_mb = parse_double(flag, val, 0, 1e6);
        } else if (!strcmp(flag, "--cap")) {
            NEEDVAL();
            a->cap_mb = parse_double(flag, val, 0, 1e6);
        } else if (!strcmp(flag, "--token-bytes")) {
            NEEDVAL();
            a->token_bytes = (int)parse_int(flag, val, 0, 4);
            if (a->token_bytes != 0 && a->token_bytes != 2 && a->token_bytes != 4) die("--token-bytes must be 0, 2 or 4");
        } else if (!strcmp(flag, "--shard-tokens")) {
            NEEDVAL();
            a->shard_tokens = parse_int(flag, val, 1024, (long long)1 << 40);
        } else if (!strcmp(flag, "--text-unit")) {
            NEEDVAL();
            if (!strcmp(val, "file")) a->text_unit = TEXT_UNIT_FILE;
            else if (!strcmp(val, "paragraph")) a->text_unit = TEXT_UNIT_PARAGRAPH;
            else if (!strcmp(val, "line")) a->text_unit = TEXT_UNIT_LINE;
            else die("--text-unit: '%s' is not file, paragraph or line", val);
        } else if (!strcmp(flag, "--no-header")) {
            NOVAL();
            a->csv_header = 0;
        } else if (!strcmp(flag, "--skip-bad")) {
            NOVAL();
            a->skip_bad = 1;
        } else if (!strcmp(flag, "--dump")) {
            NEEDVAL();
            a->dump = val;
        } else if (!strcmp(flag, "--bible")) {
            NEEDVAL();
            a->bible = val;
        } else if (!strcmp(flag, "--dictd")) {
            NEEDVAL();
            a->dictd_dir = val;
        } else if (!strcmp(flag, "--include")) {
            NEEDVAL();
            a->include_dir = val;
        } else if (!strcmp(flag, "--threads")) {
            NEEDVAL();
            a->threads = (int)parse_int(flag, val, 0, 1024);
        } else if (!strcmp(flag, "--no-verify")) {
            NOVAL();
            a->verify = 0;
        } else if (!strcmp(flag, "--inspect")) {
            NOVAL();
            if (i + 1 >= argc) die("--inspect needs at least one shard file");
            a->inspect = i + 1;
            return;
        } else if (!strcmp(flag, "-q")) {
            a->quiet = 1;
        } else {
            die("unknown option '%s' (see prepare -h)", arg);
        }
    }
    if (!a->builtin && a->n_inputs == 0) die("nothing to prepare: give --builtin and/or --input DOMAIN=PATH (see -h)");
}

// ---------------------------------------------------------------------------------------

typedef struct {
    const char *source;   // description for meta.json
    int builtin;
    int64_t docs_read, bytes_read;
    int64_t docs_kept, bytes_kept;
    int64_t docs[2], bytes[2], tokens[2];  // [train, val]
    int64_t invalid_utf8, skipped, empty;
    double seconds;
} DomainInfo;

static uint64_t hash64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}
static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    while (*s) h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
    return h;
}

static DomainInfo *g_info;  // (corpus n_domains), grown as domains appear
static int g_info_n;

static DomainInfo *info_for(int d) {
    if (d >= g_info_n) {
        g_info = (DomainInfo *)realloc(g_info, (size_t)(d + 1) * sizeof(DomainInfo));
        if (!g_info) die("out of memory");
        memset(g_info + g_info_n, 0, (size_t)(d + 1 - g_info_n) * sizeof(DomainInfo));
        g_info_n = d + 1;
    }
    return &g_info[d];
}

static void note_source(Corpus *c, int d, int64_t docs_before, const char *source, int builtin, double t0,
                        const ReadOptions *o, int quiet) {
    DomainInfo *in = info_for(d);
    int64_t nd = c->n_docs - docs_before, nb = 0;
    for (int64_t i = docs_before; i < c->n_docs; i++) nb += (int64_t)c->docs[i].len;
    in->source = source;
    in->builtin = builtin;
    in->docs_read += nd;
    in->bytes_read += nb;
    in->seconds += wall_seconds() - t0;
    if (o) {
        in->invalid_utf8 += o->n_invalid_utf8;
        in->skipped += o->n_skipped;
        in->empty += o->n_empty;
    }
    if (!quiet) {
        printf("  %-8s %8lld docs %9.2f MB  %5.1f s  (%s)", c->domains[d], (long long)nd, nb / 1e6,
               wall_seconds() - t0, source);
        if (o && o->n_invalid_utf8) printf(", %lld invalid UTF-8 bytes kept", (long long)o->n_invalid_utf8);
        if (o && o->n_skipped) printf(", %lld bad lines/rows skipped", (long long)o->n_skipped);
        if (o && o->n_empty) printf(", %lld empty documents left out", (long long)o->n_empty);
        printf("\n");
        fflush(stdout);
    }
}

static void read_builtin(Corpus *c, const Args *a) {
    MoeErr err;
    char dict[4096], index[4096];
    double t0 = wall_seconds();
    int d = corpus_domain(c, "bible", &err);
    int64_t before = c->n_docs;
    if (corpus_read_bible(c, d, a->bible, &err)) die("%s", err.msg);
    note_source(c, d, before, "bible-kjv: one document per chapter", 1, t0, NULL, a->quiet);
    static const struct {
        const char *name, *desc;
        int style;
    } dicts[] = {{"gcide", "dict-gcide: one document per entry", DICT_GCIDE},
                 {"jargon", "dict-jargon: one document per entry", DICT_PLAIN},
                 {"foldoc", "dict-foldoc: one document per entry", DICT_PLAIN}};
    for (int k = 0; k < 3; k++) {
        t0 = wall_seconds();
        snprintf(dict, sizeof(dict), "%s/%s.dict.dz", a->dictd_dir, dicts[k].name);
        snprintf(index, sizeof(index), "%s/%s.index", a->dictd_dir, dicts[k].name);
        if (!file_exists(dict) || !file_exists(index))
            die("'%s' or '%s' missing: install the Debian package dict-%s", dict, index, dicts[k].name);
        d = corpus_domain(c, dicts[k].name, &err);
        before = c->n_docs;
        if (corpus_read_dictd(c, d, dict, index, dicts[k].style, 0, &err)) die("%s", err.msg);
        note_source(c, d, before, dicts[k].desc, 1, t0, NULL, a->quiet);
    }
    t0 = wall_seconds();
    d = corpus_domain(c, "code", &err);
    before = c->n_docs;
    if (corpus_read_code(c, d, a->include_dir, 256 * 1024, &err)) die("%s", err.msg);
    note_source(c, d, before, "C headers: one document per file", 1, t0, NULL, a->quiet);
}

// ---------------------------------------------------------------------------------------

typedef struct {
    uint32_t *tok;
    int64_t n, cap;
    int64_t *doc_start;
    int32_t *doc_domain;
    int64_t n_docs, cap_docs;
} Split;

static void split_push_doc(Split *s, int domain) {
    if (s->n_docs == s->cap_docs) {
        s->cap_docs = s->cap_docs ? 2 * s->cap_docs : 1024;
        s->doc_start = (int64_t *)realloc(s->doc_start, (size_t)s->cap_docs * sizeof(int64_t));
        s->doc_domain = (int32_t *)realloc(s->doc_domain, (size_t)s->cap_docs * sizeof(int32_t));
        if (!s->doc_start || !s->doc_domain) die("out of memory");
    }
    s->doc_start[s->n_docs] = s->n;
    s->doc_domain[s->n_docs] = domain;
    s->n_docs++;
}
static void split_push_tokens(Split *s, const int32_t *ids, size_t n) {
    if (s->n + (int64_t)n > s->cap) {
        while (s->n + (int64_t)n > s->cap) s->cap = s->cap ? 2 * s->cap : 1 << 20;
        s->tok = (uint32_t *)realloc(s->tok, (size_t)s->cap * sizeof(uint32_t));
        if (!s->tok) die("out of memory (%lld tokens)", (long long)s->cap);
    }
    for (size_t i = 0; i < n; i++) s->tok[s->n + (int64_t)i] = (uint32_t)ids[i];
    s->n += (int64_t)n;
}

// write one split as shards `<out>/<prefix>_NNN.bin`, cutting at document boundaries
static int write_split(const Split *s, const char *out, const char *prefix, int64_t max_tokens, int vocab,
                       int token_bytes, const Corpus *c, cJSON *files, int quiet) {
    const char **names = (const char **)mallocCheck((size_t)c->n_domains * sizeof(char *));
    for (int d = 0; d < c->n_domains; d++) names[d] = c->domains[d];
    int64_t doc = 0;
    int shard = 0;
    do {
        int64_t d0 = doc, t0 = s->n_docs ? s->doc_start[d0] : 0;
        int64_t d1 = d0 + 1;  // at least one document, then as many as fit
        while (d1 < s->n_docs) {
            int64_t end = d1 + 1 < s->n_docs ? s->doc_start[d1 + 1] : s->n;
            if (end - t0 > max_tokens) break;
            d1++;
        }
        if (s->n_docs == 0) d1 = 0;
        int64_t t1 = d1 < s->n_docs ? s->doc_start[d1] : s->n;
        int64_t nd = d1 - d0;
        int64_t *starts = (int64_t *)malloc((size_t)(nd ? nd : 1) * sizeof(int64_t));
        if (!starts) die("out of memory");
        for (int64_t i = 0; i < nd; i++) starts[i] = s->doc_start[d0 + i] - t0;
        char path[4200];
        snprintf(path, sizeof(path), "%s/%s_%03d.bin", out, prefix, shard);
        MoeErr err;
        const uint32_t *tok = s->tok ? s->tok + t0 : NULL;  // an empty split has no arrays
        const int32_t *dom = s->doc_domain ? s->doc_domain + d0 : NULL;
        int rc = shard_write_ex(path, tok, t1 - t0, vocab, token_bytes, starts, dom, nd, names, c->n_domains, &err);
        free(starts);
        if (rc) {
            fprintf(stderr, "error: %s\n", err.msg);
            free(names);
            return -1;
        }
        if (!quiet) printf("  wrote %s: %lld tokens, %lld documents\n", path, (long long)(t1 - t0), (long long)nd);
        char base[64];
        snprintf(base, sizeof(base), "%s_%03d.bin", prefix, shard);
        cJSON_AddItemToArray(files, cJSON_CreateString(base));
        doc = d1;
        shard++;
    } while (doc < s->n_docs);
    free(names);
    return 0;
}

// --inspect: validate shards and print what they hold; 0 when all are good
static int inspect(int argc, char **argv, int first) {
    int bad = 0;
    for (int i = first; i < argc; i++) {
        Shard s;
        MoeErr err;
        if (shard_open(&s, argv[i], &err)) {
            fprintf(stderr, "error: %s\n", err.msg);
            bad = 1;
            continue;
        }
        printf("%s: %lld tokens (%d-byte ids, vocab %d), %lld documents, %d domains\n", s.path, (long long)s.n_tokens,
               s.token_bytes, s.vocab_size, (long long)s.n_docs, s.n_domains);
        int64_t *tok = (int64_t *)callocCheck((size_t)(s.n_domains ? s.n_domains : 1), sizeof(int64_t));
        int64_t *docs = (int64_t *)callocCheck((size_t)(s.n_domains ? s.n_domains : 1), sizeof(int64_t));
        for (int64_t d = 0; d < s.n_docs; d++) {
            int64_t end = d + 1 < s.n_docs ? s.doc_start[d + 1] : s.n_tokens;
            tok[s.doc_domain[d]] += end - s.doc_start[d];
            docs[s.doc_domain[d]]++;
        }
        for (int d = 0; d < s.n_domains; d++)
            printf("  domain %d %-12s %10lld tokens %8lld documents\n", d, s.domain_names[d], (long long)tok[d],
                   (long long)docs[d]);
        free(tok);
        free(docs);
        shard_close(&s);
    }
    return bad;
}

// shards of an earlier run would be picked up by a glob such as train_*.bin: remove them
static void remove_old_shards(const char *out) {
    const char *prefixes[] = {"train", "val"};
    for (int k = 0; k < 2; k++) {
        char pat[4200];
        snprintf(pat, sizeof(pat), "%s/%s_[0-9][0-9][0-9]*.bin", out, prefixes[k]);
        glob_t g;
        if (glob(pat, 0, NULL, &g) == 0) {
            for (size_t i = 0; i < g.gl_pathc; i++)
                if (unlink(g.gl_pathv[i]) != 0) die("cannot remove the old shard '%s': %s", g.gl_pathv[i], strerror(errno));
            globfree(&g);
        }
    }
}

int main(int argc, char **argv) {
    Args a;
    parse_args(argc, argv, &a);
    if (a.inspect) return inspect(argc, argv, a.inspect);
    double t_start = wall_seconds();
    if (a.threads > 0) omp_set_num_threads(a.threads);
    char out[4096];
    if (a.out) snprintf(out, sizeof(out), "%s", a.out);
    else snprintf(out, sizeof(out), "data/cache/%s", a.name);
    MoeErr err;

    // early checks that need no work
    if (a.token_bytes == 2 && !a.tokenizer && a.vocab > 65535)
        die("--vocab %d is too large for 2-byte (uint16) token ids (max 65535); use --token-bytes 4 or 0", a.vocab);
    Tokenizer *tok = NULL;
    if (a.tokenizer) {
        tok = tokenizer_load(a.tokenizer, &err);
        if (!tok) die("%s", err.msg);
        int v = tokenizer_vocab_size(tok);
        if (a.token_bytes == 2 && v > 65535)
            die("tokenizer '%s' has %d tokens: too large for 2-byte (uint16) token ids (max 65535); use --token-bytes "
                "4 or 0",
                a.tokenizer, v);
    }

    // 1. documents
    if (!a.quiet) printf("prepare: reading sources into '%s'\n", out);
    Corpus c = {0};
    if (a.builtin) read_builtin(&c, &a);
    for (int i = 0; i < a.n_inputs; i++) {
        ReadOptions o;
        read_options_default(&o);
        o.text_unit = a.text_unit;
        o.csv_header = a.csv_header;
        o.skip_bad = a.skip_bad;
        double t0 = wall_seconds();
        int64_t before = c.n_docs;
        if (corpus_read_input(&c, a.inputs[i], &o, &err)) die("%s", err.msg);
        // the domain is the one named in the spec
        char dname[64];
        const char *eq = strchr(a.inputs[i], '=');
        snprintf(dname, sizeof(dname), "%.*s", (int)(eq - a.inputs[i]), a.inputs[i]);
        int d = corpus_domain(&c, dname, &err);
        if (d < 0) die("%s", err.msg);
        if (d < g_info_n && g_info[d].builtin) die("--input domain '%s' clashes with a built-in domain", dname);
        note_source(&c, d, before, eq + 1, 0, t0, &o, a.quiet);
    }
    for (int d = 0; d < c.n_domains; d++) info_for(d);
    if (c.n_docs == 0) die("no documents: every input was empty");

    // 2. cap each domain (deterministic sample spread over the source), split train/val
    int8_t *which = (int8_t *)mallocCheck((size_t)c.n_docs);  // -1 dropped, 0 train, 1 val
    for (int d = 0; d < c.n_domains; d++) {
        DomainInfo *in = &g_info[d];
        double cap = (in->builtin ? a.builtin_cap_mb : a.cap_mb) * 1e6;
        double keep = (cap > 0 && in->bytes_read > cap) ? cap / (double)in->bytes_read : 1.0;
        uint64_t salt = hash_str(c.domains[d]);
        int64_t k = 0, last = -1, j = 0;  // j: index within the domain (stable when other sources change)
        for (int64_t i = 0; i < c.n_docs; i++) {
            if (c.docs[i].domain != d) continue;
            double u = (double)(hash64(salt ^ hash64((uint64_t)j++)) >> 11) / 9007199254740992.0;
            if (u >= keep) {
                which[i] = -1;
                continue;
            }
            which[i] = (a.val_every > 0 && k % a.val_every == a.val_every - 1) ? 1 : 0;
            last = i;
            k++;
        }
        // a domain with 2+ documents always has one in validation
        if (a.val_every > 0 && k >= 2 && k < a.val_every) which[last] = 1;
        for (int64_t i = 0; i < c.n_docs; i++) {
            if (c.docs[i].domain != d || which[i] < 0) continue;
            in->docs_kept++;
            in->bytes_kept += (int64_t)c.docs[i].len;
            in->docs[which[i]]++;
            in->bytes[which[i]] += (int64_t)c.docs[i].len;
        }
    }
    for (int64_t i = 0; i < c.n_docs; i++)  // documents left out by the caps are not needed any more
        if (which[i] < 0) {
            free(c.docs[i].text);
            c.docs[i].text = NULL;
            c.docs[i].len = 0;
        }
    if (a.dump) {
        FILE *fp = fopen(a.dump, "wb");
        if (!fp) die("cannot create '%s': %s", a.dump, strerror(errno));
        for (int64_t i = 0; i < c.n_docs; i++) {
            if (which[i] < 0) continue;
            fprintf(fp, "=== %s %s doc %lld\n", c.domains[c.docs[i].domain], which[i] ? "val" : "train", (long long)i);
            fwrite(c.docs[i].text, 1, c.docs[i].len, fp);
            fputc('\n', fp);
        }
        if (fclose(fp) != 0) die("cannot write '%s'", a.dump);
    }

    // 3. tokenizer
    if (make_dirs(out, &err)) die("%s", err.msg);
    char meta_path[4200], tok_path[4200];
    snprintf(meta_path, sizeof(meta_path), "%s/meta.json", out);
    snprintf(tok_path, sizeof(tok_path), "%s/tokenizer.json", out);
    unlink(meta_path);  // the folder is incomplete until meta.json is written again
    remove_old_shards(out);
    double t_tok = wall_seconds();
    if (!tok) {
        TokTrainConfig cfg;
        tok_train_config_default(&cfg);
        cfg.vocab_size = a.vocab;
        cfg.pattern = a.pattern;
        cfg.verbose = !a.quiet;
        TokTrainer *tr = tok_trainer_new(&cfg, &err);
        if (!tr) die("%s", err.msg);
        int64_t fed = 0;
        for (int64_t i = 0; i < c.n_docs; i++) {
            if (which[i] != 0) continue;
            if (tok_trainer_feed(tr, c.docs[i].text, c.docs[i].len, &err)) die("%s", err.msg);
            fed += (int64_t)c.docs[i].len;
        }
        if (!a.quiet) {
            printf("training tokenizer: vocab %d on %.2f MB of training text\n", a.vocab, fed / 1e6);
            fflush(stdout);
        }
        tok = tok_trainer_finish(tr, &err);
        tok_trainer_free(tr);
        if (!tok) die("%s", err.msg);
    }
    t_tok = wall_seconds() - t_tok;
    if (tokenizer_save(tok, tok_path, &err)) die("%s", err.msg);
    int vocab = tokenizer_vocab_size(tok);
    int token_bytes = a.token_bytes ? a.token_bytes : shard_token_bytes_for_vocab(vocab);
    if (token_bytes == 2 && vocab > 65535)
        die("vocabulary of %d tokens is too large for 2-byte (uint16) token ids (max 65535)", vocab);
    int bos = tokenizer_bos_id(tok);
    if (!a.quiet)
        printf("tokenizer: %d tokens (%s), %.1f s, saved %s\n", vocab, a.tokenizer ? a.tokenizer : "trained", t_tok,
               tok_path);

    // 4. encode every kept document (in parallel, one encoder per thread)
    double t_enc = wall_seconds();
    TokIds *ids = (TokIds *)callocCheck((size_t)c.n_docs, sizeof(TokIds));
    int64_t invalid_total = 0;
    int failed = 0;
    char fail_msg[640] = "";
#pragma omp parallel reduction(+ : invalid_total)
    {
        MoeErr terr;
        TokEncoder *enc = tok_encoder_new(tok, &terr);
        if (!enc) {
#pragma omp critical
            {
                failed = 1;
                snprintf(fail_msg, sizeof(fail_msg), "%s", terr.msg);
            }
        }
#pragma omp for schedule(dynamic, 64)
        for (int64_t i = 0; i < c.n_docs; i++) {
            if (!enc || which[i] < 0) continue;
            if (tok_encoder_encode(enc, c.docs[i].text, c.docs[i].len, 0, &ids[i], &terr)) {
#pragma omp critical
                {
                    failed = 1;
                    snprintf(fail_msg, sizeof(fail_msg), "%s", terr.msg);
                }
            } else if (a.verify) {  // the tokenizer must give back every byte
                char *back = NULL;
                size_t n_back = 0;
                int bad = tokenizer_decode(tok, ids[i].ids, ids[i].n, 0, &back, &n_back, &terr) != 0;
                if (!bad && (n_back != c.docs[i].len || memcmp(back, c.docs[i].text, n_back) != 0)) {
                    bad = 1;
                    snprintf(terr.msg, sizeof(terr.msg),
                             "document %lld (domain %s, %zu bytes) does not decode back to the same bytes",
                             (long long)i, c.domains[c.docs[i].domain], c.docs[i].len);
                }
                free(back);
                if (bad) {
#pragma omp critical
                    {
                        failed = 1;
                        snprintf(fail_msg, sizeof(fail_msg), "round trip: %s", terr.msg);
                    }
                }
            }
        }
        if (enc) {
            invalid_total += tok_encoder_invalid_utf8(enc);
            tok_encoder_free(enc);
        }
    }
    if (failed) die("encoding failed: %s", fail_msg);
    Split sp[2];
    memset(sp, 0, sizeof(sp));
    int32_t bos32 = bos;
    int64_t text_bytes = 0;
    for (int64_t i = 0; i < c.n_docs; i++) {
        if (which[i] < 0) continue;
        Split *s = &sp[which[i]];
        split_push_doc(s, c.docs[i].domain);
        if (bos >= 0) split_push_tokens(s, &bos32, 1);
        split_push_tokens(s, ids[i].ids, ids[i].n);
        g_info[c.docs[i].domain].tokens[which[i]] += (int64_t)ids[i].n + (bos >= 0);
        text_bytes += (int64_t)c.docs[i].len;
        tok_ids_free(&ids[i]);
    }
    free(ids);
    t_enc = wall_seconds() - t_enc;
    if (!a.quiet)
        printf("encoded %.2f MB into %lld train + %lld val tokens (%.2f bytes/token) in %.1f s (%.2f MB/s)%s\n",
               text_bytes / 1e6, (long long)sp[0].n, (long long)sp[1].n,
               (double)text_bytes / (double)(sp[0].n + sp[1].n > 0 ? sp[0].n + sp[1].n : 1), t_enc,
               text_bytes / 1e6 / (t_enc > 0 ? t_enc : 1e-9),
               a.verify ? ", every document decodes back to its exact bytes" : "");
    if (invalid_total && !a.quiet)
        printf("note: %lld invalid UTF-8 sequences were encoded as raw bytes\n", (long long)invalid_total);
    if (sp[1].n_docs == 0 && !a.quiet)
        printf("warning: the validation split is empty (too few documents or --val-every 0)\n");

    // 5. shards
    cJSON *meta = cJSON_CreateObject();
    cJSON *train_files = cJSON_CreateArray(), *val_files = cJSON_CreateArray();
    if (write_split(&sp[0], out, "train", a.shard_tokens, vocab, token_bytes, &c, train_files, a.quiet)) return 1;
    if (write_split(&sp[1], out, "val", (int64_t)1 << 62, vocab, token_bytes, &c, val_files, a.quiet)) return 1;

    // 6. meta.json (last)
    cJSON_AddStringToObject(meta, "name", a.name);
    cJSON_AddStringToObject(meta, "format", "moe.c token shards v1");
    cJSON_AddStringToObject(meta, "tokenizer", "tokenizer.json");
    cJSON_AddStringToObject(meta, "tokenizer_source", a.tokenizer ? a.tokenizer : "trained on the train split");
    cJSON_AddNumberToObject(meta, "vocab_size", vocab);
    cJSON_AddNumberToObject(meta, "token_bytes", token_bytes);
    cJSON_AddNumberToObject(meta, "bos_id", bos);
    cJSON_AddStringToObject(meta, "doc_prefix", bos >= 0 ? "bos" : "none");
    cJSON_AddNumberToObject(meta, "val_every", a.val_every);
    cJSON_AddItemToObject(meta, "train", train_files);
    cJSON_AddItemToObject(meta, "val", val_files);
    cJSON_AddNumberToObject(meta, "train_tokens", (double)sp[0].n);
    cJSON_AddNumberToObject(meta, "val_tokens", (double)sp[1].n);
    cJSON_AddNumberToObject(meta, "invalid_utf8", (double)invalid_total);
    cJSON *doms = cJSON_AddArrayToObject(meta, "domains");
    for (int d = 0; d < c.n_domains; d++) {
        DomainInfo *in = &g_info[d];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", c.domains[d]);
        cJSON_AddStringToObject(o, "source", in->source ? in->source : "");
        cJSON_AddNumberToObject(o, "docs_read", (double)in->docs_read);
        cJSON_AddNumberToObject(o, "bytes_read", (double)in->bytes_read);
        cJSON_AddNumberToObject(o, "train_docs", (double)in->docs[0]);
        cJSON_AddNumberToObject(o, "val_docs", (double)in->docs[1]);
        cJSON_AddNumberToObject(o, "train_bytes", (double)in->bytes[0]);
        cJSON_AddNumberToObject(o, "val_bytes", (double)in->bytes[1]);
        cJSON_AddNumberToObject(o, "train_tokens", (double)in->tokens[0]);
        cJSON_AddNumberToObject(o, "val_tokens", (double)in->tokens[1]);
        cJSON_AddNumberToObject(o, "invalid_utf8_bytes", (double)in->invalid_utf8);
        cJSON_AddNumberToObject(o, "skipped", (double)in->skipped);
        cJSON_AddItemToArray(doms, o);
    }
    cJSON_AddNumberToObject(meta, "seconds", wall_seconds() - t_start);
    char *js = cJSON_Print(meta);
    if (!js) die("out of memory");
    if (write_file_atomic(meta_path, js, strlen(js), &err)) die("%s", err.msg);
    free(js);
    cJSON_Delete(meta);

    if (!a.quiet) {
        printf("\n%-8s %9s %9s %10s %10s %11s %11s\n", "domain", "train_doc", "val_doc", "train_MB", "val_MB",
               "train_tok", "val_tok");
        for (int d = 0; d < c.n_domains; d++) {
            DomainInfo *in = &g_info[d];
            printf("%-8s %9lld %9lld %10.2f %10.2f %11lld %11lld\n", c.domains[d], (long long)in->docs[0],
                   (long long)in->docs[1], in->bytes[0] / 1e6, in->bytes[1] / 1e6, (long long)in->tokens[0],
                   (long long)in->tokens[1]);
        }
        printf("done in %.1f s: %s\n", wall_seconds() - t_start, meta_path);
    }
    for (int k = 0; k < 2; k++) {
        free(sp[k].tok);
        free(sp[k].doc_start);
        free(sp[k].doc_domain);
    }
    free(which);
    free(g_info);
    tokenizer_free(tok);
    corpus_free(&c);
    return 0;
}
