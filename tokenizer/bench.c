// bench_tokenizer: training time for N merges over ~10 MB of real text, and encode /
// decode throughput. The default corpus comes from installed Debian packages: the GCIDE,
// FOLDOC and Jargon dictzip files (read with zlib) and C headers under /usr/include.

#include <dirent.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "../common/util.h"
#include "tokenizer.h"

typedef struct {
    char *data;
    size_t n, cap;
} Buf;

static void buf_add(Buf *b, const char *p, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : (1 << 20);
        while (cap < b->n + n) cap *= 2;
        char *nd = realloc(b->data, cap);
        if (!nd) {
            fprintf(stderr, "bench_tokenizer: out of memory\n");
            exit(EXIT_FAILURE);
        }
        b->data = nd;
        b->cap = cap;
    }
    memcpy(b->data + b->n, p, n);
    b->n += n;
}

// up to `limit` bytes of a gzip/dictzip file (skipping `skip` bytes of database header)
static size_t add_gz(Buf *b, const char *path, size_t skip, size_t limit) {
    gzFile f = gzopen(path, "rb");
    if (!f) return 0;
    char chunk[1 << 16];
    size_t got = 0, seen = 0;
    int r;
    while (got < limit && (r = gzread(f, chunk, sizeof(chunk))) > 0) {
        size_t s = 0, n = (size_t)r;
        if (seen < skip) s = skip - seen < n ? skip - seen : n;
        seen += n;
        size_t take = n - s;
        if (take > limit - got) take = limit - got;
        buf_add(b, chunk + s, take);
        got += take;
    }
    gzclose(f);
    return got;
}

// C headers, recursively, sorted walk for determinism, up to limit bytes
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static size_t add_headers(Buf *b, const char *dir, size_t limit, int depth) {
    if (limit == 0 || depth > 6) return 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    char **names = NULL;
    size_t nn = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (nn == cap) {
            cap = cap ? cap * 2 : 64;
            names = realloc(names, cap * sizeof(char *));
            if (!names) exit(EXIT_FAILURE);
        }
        names[nn++] = strdup(e->d_name);
    }
    closedir(d);
    if (nn) qsort(names, nn, sizeof(char *), cmp_str);
    size_t got = 0;
    for (size_t i = 0; i < nn; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        struct stat st;
        if (got < limit && lstat(path, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                got += add_headers(b, path, limit - got, depth + 1);
            } else if (S_ISREG(st.st_mode) && strlen(names[i]) > 2 && strcmp(names[i] + strlen(names[i]) - 2, ".h") == 0) {
                char *data;
                size_t n;
                MoeErr err;
                if (read_file_all(path, &data, &n, &err) == 0) {
                    if (n > limit - got) n = limit - got;
                    buf_add(b, data, n);
                    got += n;
                    free(data);
                }
            }
        }
        free(names[i]);
    }
    free(names);
    return got;
}

// CPU seconds of this process: on a shared, loaded machine wall time overstates the cost
static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench_tokenizer [options]\n"
            "  -n MB     corpus size in MB (default 10)\n"
            "  -m N      number of merges to train (default 8192)\n"
            "  -p NAME   pre-split pattern gpt2|gpt4|qwen|deepseek (default gpt4)\n"
            "  -f FILE   use this text file as the corpus instead of the built-in mix\n"
            "  -o PATH   also save the trained tokenizer.json here (default: not saved)\n"
            "  -h        this help\n");
}

int main(int argc, char **argv) {
    double mb = 10;
    int merges = 8192;
    const char *pattern = "gpt4", *file = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc || argv[i][0] != '-') {
            fprintf(stderr, "bench_tokenizer: bad argument '%s' (see -h)\n", argv[i]);
            return EXIT_FAILURE;
        }
        const char *v = argv[++i];
        if (strcmp(argv[i - 1], "-n") == 0) mb = atof(v);
        else if (strcmp(argv[i - 1], "-m") == 0) merges = atoi(v);
        else if (strcmp(argv[i - 1], "-p") == 0) pattern = v;
        else if (strcmp(argv[i - 1], "-f") == 0) file = v;
        else if (strcmp(argv[i - 1], "-o") == 0) out = v;
        else {
            fprintf(stderr, "bench_tokenizer: unknown flag '%s' (see -h)\n", argv[i - 1]);
            return EXIT_FAILURE;
        }
    }
    if (!(mb > 0 && mb <= 4096) || merges < 1 || merges > (1 << 22)) {
        fprintf(stderr, "bench_tokenizer: -n must be in (0, 4096] and -m in [1, 4194304]\n");
        return EXIT_FAILURE;
    }
    size_t limit = (size_t)(mb * 1e6);
    Buf corpus = {0};
    if (file) {
        MoeErr err;
        char *data;
        size_t n;
        if (read_file_all(file, &data, &n, &err) != 0) {
            fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
            return EXIT_FAILURE;
        }
        buf_add(&corpus, data, n < limit ? n : limit);
        free(data);
    } else {
        size_t g = add_gz(&corpus, "/usr/share/dictd/gcide.dict.dz", 4096, limit * 4 / 10);
        size_t fo = add_gz(&corpus, "/usr/share/dictd/foldoc.dict.dz", 1024, limit * 2 / 10);
        size_t j = add_gz(&corpus, "/usr/share/dictd/jargon.dict.dz", 1024, limit / 10);
        size_t h = add_headers(&corpus, "/usr/include", limit - corpus.n, 0);
        printf("corpus: gcide %.2f MB, foldoc %.2f MB, jargon %.2f MB, C headers %.2f MB\n", g / 1e6, fo / 1e6, j / 1e6,
               h / 1e6);
    }
    if (corpus.n == 0) {
        fprintf(stderr, "bench_tokenizer: no corpus text found (install dict-gcide or pass -f FILE)\n");
        return EXIT_FAILURE;
    }
    printf("corpus: %.2f MB, pattern %s, %d merges, %d threads\n", corpus.n / 1e6, pattern, merges,
           omp_get_max_threads());

    TokTrainConfig cfg;
    tok_train_config_default(&cfg);
    cfg.vocab_size = 256 + merges + 3;
    cfg.pattern = pattern;
    MoeErr err;
    double t0 = wall_seconds(), c0 = cpu_seconds();
    TokTrainer *tr = tok_trainer_new(&cfg, &err);
    if (!tr) {
        fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    // feed in 1 MB documents (cut at a newline)
    for (size_t off = 0; off < corpus.n;) {
        size_t end = off + (1 << 20) < corpus.n ? off + (1 << 20) : corpus.n;
        while (end < corpus.n && corpus.data[end - 1] != '\n') end++;
        if (tok_trainer_feed(tr, corpus.data + off, end - off, &err) != 0) {
            fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
            return EXIT_FAILURE;
        }
        off = end;
    }
    double c1 = cpu_seconds();
    Tokenizer *tok = tok_trainer_finish(tr, &err);
    double t2 = wall_seconds(), c2 = cpu_seconds();
    if (!tok) {
        fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    tok_trainer_free(tr);
    printf("train: %d merges in %.2f s wall, %.2f s CPU (pre-split + count %.2f s CPU, merges %.2f s CPU)\n",
           tokenizer_n_merges(tok), t2 - t0, c2 - c0, c1 - c0, c2 - c1);
    if (out && tokenizer_save(tok, out, &err) != 0) {
        fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
        return EXIT_FAILURE;
    }

    // encode: cold (fresh cache) and warm, one thread
    TokIds ids = {0};
    double best_cold = 1e30, best_warm = 1e30, cpu_cold = 1e30, cpu_warm = 1e30;
    for (int rep = 0; rep < 2; rep++) {
        TokEncoder *enc = tok_encoder_new(tok, &err);
        ids.n = 0;
        double a = wall_seconds(), ca = cpu_seconds();
        tok_encoder_encode(enc, corpus.data, corpus.n, 0, &ids, &err);
        double b = wall_seconds(), cb = cpu_seconds();
        ids.n = 0;
        tok_encoder_encode(enc, corpus.data, corpus.n, 0, &ids, &err);
        double c = wall_seconds(), cc = cpu_seconds();
        if (b - a < best_cold) best_cold = b - a;
        if (c - b < best_warm) best_warm = c - b;
        if (cb - ca < cpu_cold) cpu_cold = cb - ca;
        if (cc - cb < cpu_warm) cpu_warm = cc - cb;
        tok_encoder_free(enc);
    }
    printf("encode (1 thread): %.2f MB/s cold cache, %.2f MB/s warm cache (per CPU second: %.2f, %.2f); "
           "%zu tokens, %.3f bytes/token\n",
           corpus.n / best_cold / 1e6, corpus.n / best_warm / 1e6, corpus.n / cpu_cold / 1e6, corpus.n / cpu_warm / 1e6,
           ids.n, (double)corpus.n / (double)ids.n);
    // encode with one encoder per thread over 1 MB chunks
    {
        int nt = omp_get_max_threads();
        size_t n_chunks = (corpus.n + (1 << 20) - 1) >> 20;
        size_t *counts = callocCheck(n_chunks, sizeof(size_t));
        double a = wall_seconds();
#pragma omp parallel num_threads(nt)
        {
            MoeErr e2;
            TokEncoder *enc = tok_encoder_new(tok, &e2);
            TokIds local = {0};
#pragma omp for schedule(dynamic, 1)
            for (size_t c = 0; c < n_chunks; c++) {
                size_t s = c << 20, e = s + (1 << 20) < corpus.n ? s + (1 << 20) : corpus.n;
                local.n = 0;
                if (enc) tok_encoder_encode(enc, corpus.data + s, e - s, 0, &local, &e2);
                counts[c] = local.n;
            }
            tok_ids_free(&local);
            tok_encoder_free(enc);
        }
        double b = wall_seconds();
        printf("encode (%d threads, 1 MB chunks, cold caches): %.2f MB/s\n", nt, corpus.n / (b - a) / 1e6);
        free(counts);
    }
    // decode and round trip
    char *back;
    size_t nb;
    double a = wall_seconds();
    if (tokenizer_decode(tok, ids.ids, ids.n, 0, &back, &nb, &err) != 0) {
        fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    double b = wall_seconds();
    int ok = nb == corpus.n && memcmp(back, corpus.data, nb) == 0;
    printf("decode: %.2f MB/s; round trip %s\n", nb / (b - a) / 1e6, ok ? "exact" : "DIFFERS");
    free(back);
    tok_ids_free(&ids);
    tokenizer_free(tok);
    free(corpus.data);
    return ok ? 0 : EXIT_FAILURE;
}
