// Writes synthetic token shards with known structure for tests and benchmarks:
// a first-order Markov chain over V tokens where each token has `fanout` equally likely
// successors (conditional entropy ln(fanout)), documents of random length, D domains
// (each domain uses its own successor table, so routing can specialise by domain).
// usage: gen_shards OUT.bin V N_TOKENS SEED [FANOUT] [DOMAINS]
#include "../common/util.h"
#include "../data/shard.h"

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s OUT.bin V N_TOKENS SEED [FANOUT=4] [DOMAINS=2]\n", argv[0]);
        return 2;
    }
    const char *out = argv[1];
    int V = atoi(argv[2]);
    long n = atol(argv[3]);
    uint64_t rng = rng_seed(strtoull(argv[4], NULL, 10));
    int fanout = argc > 5 ? atoi(argv[5]) : 4;
    int D = argc > 6 ? atoi(argv[6]) : 2;
    if (V < 2 || n < 1 || fanout < 1 || D < 1 || D > 16) {
        fprintf(stderr, "error: bad arguments\n");
        return 2;
    }
    // successor tables, fixed by the table seed (not the sample seed) so train and val agree
    uint64_t trng = rng_seed(12345);
    int *succ = mallocCheck(sizeof(int) * (size_t)D * V * fanout);
    for (long i = 0; i < (long)D * V * fanout; i++) succ[i] = (int)(rng_next_u64(&trng) % (uint64_t)V);
    uint32_t *tok = mallocCheck(sizeof(uint32_t) * (size_t)n);
    int64_t *doc_start = mallocCheck(sizeof(int64_t) * (size_t)n);
    int32_t *doc_dom = mallocCheck(sizeof(int32_t) * (size_t)n);
    int64_t ndocs = 0;
    long i = 0;
    while (i < n) {
        int d = (int)(rng_next_u64(&rng) % (uint64_t)D);
        long len = 50 + (long)(rng_next_u64(&rng) % 400);
        doc_start[ndocs] = i;
        doc_dom[ndocs++] = d;
        int cur = (int)(rng_next_u64(&rng) % (uint64_t)V);
        for (long j = 0; j < len && i < n; j++, i++) {
            tok[i] = (uint32_t)cur;
            cur = succ[((size_t)d * V + cur) * fanout + rng_next_u64(&rng) % (uint64_t)fanout];
        }
    }
    const char *names[16] = {"alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta",
                             "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi"};
    MoeErr err;
    if (shard_write(out, tok, n, V, doc_start, doc_dom, ndocs, names, D, &err) != 0) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    free(succ), free(tok), free(doc_start), free(doc_dom);
    return 0;
}
