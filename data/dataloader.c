// The dataloader: non-overlapping windows of T+1 tokens (stride T) over one or more shards,
// visited in a per-epoch permutation derived from (seed, epoch) (or in order for sweeps).
#define _POSIX_C_SOURCE 200809L
#include "dataloader.h"

#include <glob.h>

struct DataLoader {
    int B, T;
    int n_shards;
    Shard *shards;              // (n_shards)
    int64_t *window_prefix;     // (n_shards + 1) first global window index of each shard
    int64_t n_windows;
    int **domain_map;           // (n_shards) shard-local domain -> global domain
    int n_domains;
    char (*domain_names)[SHARD_DOMAIN_NAME_LEN];  // (n_domains)
    int vocab_size;
    int64_t n_tokens;
    int64_t *order;             // (n_windows) this epoch's window order
    int64_t order_epoch;        // epoch `order` was built for (-1: none)
    DataLoaderState st;
};

// windows of T+1 tokens with stride T inside one shard
static int64_t shard_windows(int64_t n_tokens, int T) { return n_tokens >= T + 1 ? (n_tokens - 1) / T : 0; }

static void build_order(DataLoader *dl) {
    int64_t n = dl->n_windows;
    for (int64_t i = 0; i < n; i++) dl->order[i] = i;
    if (dl->st.shuffle) {
        // Fisher-Yates with an RNG seeded from (seed, epoch) only: any position is reproducible
        uint64_t rng = rng_seed(rng_seed(dl->st.seed) ^ (uint64_t)dl->st.epoch * 0xD1B54A32D192ED03ULL);
        for (int64_t i = n - 1; i > 0; i--) {
            int64_t j = (int64_t)(rng_next_u64(&rng) % (uint64_t)(i + 1));
            int64_t t = dl->order[i];
            dl->order[i] = dl->order[j];
            dl->order[j] = t;
        }
    }
    dl->order_epoch = dl->st.epoch;
}

static int add_path(char ***paths, int *n, int *cap, const char *p) {
    if (*n == *cap) {
        int nc = *cap ? 2 * *cap : 8;
        char **np = (char **)realloc(*paths, (size_t)nc * sizeof(char *));
        if (!np) return -1;
        *paths = np;
        *cap = nc;
    }
    (*paths)[*n] = strdup(p);
    if (!(*paths)[*n]) return -1;
    (*n)++;
    return 0;
}

// split "a,b*,c" and expand globs (sorted by glob); a plain path is kept as given so that a
// missing file is reported by shard_open with its name
static int expand_paths(const char *spec, char ***out, int *n_out, MoeErr *err) {
    char **paths = NULL;
    int n = 0, cap = 0;
    char *copy = strdup(spec);
    if (!copy) return moe_err_set(err, "out of memory");
    int rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save)) {
        if (*tok == '\0') continue;
        if (strpbrk(tok, "*?[") == NULL) {
            if (add_path(&paths, &n, &cap, tok)) rc = moe_err_set(err, "out of memory");
            continue;
        }
        glob_t g;
        int gr = glob(tok, 0, NULL, &g);
        if (gr == GLOB_NOMATCH || (gr == 0 && g.gl_pathc == 0)) {
            rc = moe_err_set(err, "no shard files match '%s'", tok);
        } else if (gr != 0) {
            rc = moe_err_set(err, "cannot expand '%s'", tok);
        } else {
            for (size_t i = 0; i < g.gl_pathc && rc == 0; i++)
                if (add_path(&paths, &n, &cap, g.gl_pathv[i])) rc = moe_err_set(err, "out of memory");
        }
        if (gr == 0) globfree(&g);
    }
    free(copy);
    if (rc == 0 && n == 0) rc = moe_err_set(err, "no shard paths given in '%s'", spec);
    if (rc != 0) {
        for (int i = 0; i < n; i++) free(paths[i]);
        free(paths);
        return -1;
    }
    *out = paths;
    *n_out = n;
    return 0;
}

static int global_domain(DataLoader *dl, const char *name) {
    for (int d = 0; d < dl->n_domains; d++)
        if (strcmp(dl->domain_names[d], name) == 0) return d;
    void *p = realloc(dl->domain_names, (size_t)(dl->n_domains + 1) * SHARD_DOMAIN_NAME_LEN);
    if (!p) return -1;
    dl->domain_names = p;
    memcpy(dl->domain_names[dl->n_domains], name, SHARD_DOMAIN_NAME_LEN);
    return dl->n_domains++;
}

int dataloader_open(DataLoader **out, const char *paths, int B, int T, uint64_t seed, int shuffle, MoeErr *err) {
    *out = NULL;
    if (B <= 0 || T <= 0) return moe_err_set(err, "dataloader: B=%d and T=%d must be positive", B, T);
    if (!paths) return moe_err_set(err, "dataloader: no shard paths");
    char **list = NULL;
    int n = 0;
    if (expand_paths(paths, &list, &n, err)) return -1;
    DataLoader *dl = (DataLoader *)calloc(1, sizeof(DataLoader));
    if (!dl) {
        for (int i = 0; i < n; i++) free(list[i]);
        free(list);
        return moe_err_set(err, "out of memory");
    }
    dl->B = B;
    dl->T = T;
    dl->shards = (Shard *)calloc((size_t)n, sizeof(Shard));
    dl->window_prefix = (int64_t *)calloc((size_t)n + 1, sizeof(int64_t));
    dl->domain_map = (int **)calloc((size_t)n, sizeof(int *));
    int rc = (dl->shards && dl->window_prefix && dl->domain_map) ? 0 : moe_err_set(err, "out of memory");
    for (int i = 0; i < n && rc == 0; i++) {
        if (shard_open(&dl->shards[i], list[i], err)) {
            rc = -1;
            break;
        }
        dl->n_shards = i + 1;
        Shard *s = &dl->shards[i];
        dl->domain_map[i] = (int *)calloc((size_t)(s->n_domains ? s->n_domains : 1), sizeof(int));
        if (!dl->domain_map[i]) rc = moe_err_set(err, "out of memory");
        for (int d = 0; d < s->n_domains && rc == 0; d++) {
            int g = global_domain(dl, s->domain_names[d]);
            if (g < 0) rc = moe_err_set(err, "out of memory");
            dl->domain_map[i][d] = g;
        }
        if (s->vocab_size > dl->vocab_size) dl->vocab_size = s->vocab_size;
        dl->n_tokens += s->n_tokens;
        dl->window_prefix[i + 1] = dl->window_prefix[i] + shard_windows(s->n_tokens, T);
    }
    for (int i = 0; i < n; i++) free(list[i]);
    free(list);
    if (rc == 0) {
        dl->n_windows = dl->window_prefix[dl->n_shards];
        if (dl->n_windows < B)
            rc = moe_err_set(err,
                             "dataloader: '%s' holds %lld tokens in %d shard(s), giving %lld windows of T+1=%d tokens: "
                             "fewer than one batch (B=%d)",
                             paths, (long long)dl->n_tokens, dl->n_shards, (long long)dl->n_windows, T + 1, B);
    }
    if (rc == 0) {
        dl->order = (int64_t *)malloc((size_t)dl->n_windows * sizeof(int64_t));
        if (!dl->order) rc = moe_err_set(err, "out of memory (%lld windows)", (long long)dl->n_windows);
    }
    if (rc != 0) {
        dataloader_free(dl);
        return -1;
    }
    dl->st.seed = seed;
    dl->st.shuffle = shuffle ? 1 : 0;
    dl->st.epoch = 0;
    dl->st.position = 0;
    build_order(dl);
    *out = dl;
    return 0;
}

void dataloader_free(DataLoader *dl) {
    if (!dl) return;
    for (int i = 0; i < dl->n_shards; i++) shard_close(&dl->shards[i]);
    if (dl->domain_map)
        for (int i = 0; i < dl->n_shards; i++) free(dl->domain_map[i]);
    free(dl->domain_map);
    free(dl->shards);
    free(dl->window_prefix);
    free(dl->domain_names);
    free(dl->order);
    free(dl);
}

// global window index -> (shard, first token)
static void locate_window(const DataLoader *dl, int64_t w, int *shard, int64_t *start) {
    int lo = 0, hi = dl->n_shards - 1;
    while (lo < hi) {  // last shard whose prefix <= w
        int mid = lo + (hi - lo + 1) / 2;
        if (dl->window_prefix[mid] <= w)
            lo = mid;
        else
            hi = mid - 1;
    }
    *shard = lo;
    *start = (w - dl->window_prefix[lo]) * dl->T;
}

void dataloader_next(DataLoader *dl, int *inputs, int *targets, int *domains) {
    int B = dl->B, T = dl->T;
    if (dl->st.position + B > dl->n_windows) {  // the rest of this epoch is less than a batch
        dl->st.epoch++;
        dl->st.position = 0;
    }
    if (dl->order_epoch != dl->st.epoch) build_order(dl);
    for (int b = 0; b < B; b++) {
        int si;
        int64_t start;
        locate_window(dl, dl->order[dl->st.position + b], &si, &start);
        const Shard *s = &dl->shards[si];
        int *in = inputs + (size_t)b * T;   // (T)
        int *tg = targets + (size_t)b * T;  // (T)
        if (s->token_bytes == 2) {
            const uint16_t *t16 = (const uint16_t *)s->tokens + start;
            for (int t = 0; t < T; t++) {
                in[t] = t16[t];
                tg[t] = t16[t + 1];
            }
        } else {
            const uint32_t *t32 = (const uint32_t *)s->tokens + start;
            for (int t = 0; t < T; t++) {
                in[t] = (int)t32[t];
                tg[t] = (int)t32[t + 1];
            }
        }
        if (domains) domains[b] = s->n_docs ? dl->domain_map[si][shard_domain_at(s, start)] : 0;
    }
    dl->st.position += B;
}

int64_t dataloader_num_batches(const DataLoader *dl) { return dl->n_windows / dl->B; }

void dataloader_reset(DataLoader *dl) {
    dl->st.epoch = 0;
    dl->st.position = 0;
}

void dataloader_get_state(const DataLoader *dl, DataLoaderState *st) { *st = dl->st; }

int dataloader_set_state(DataLoader *dl, const DataLoaderState *st, MoeErr *err) {
    if (st->epoch < 0) return moe_err_set(err, "dataloader state: epoch %lld is negative", (long long)st->epoch);
    if (st->position < 0 || st->position > dl->n_windows)
        return moe_err_set(err, "dataloader state: position %lld outside [0, %lld] (the data has changed?)",
                           (long long)st->position, (long long)dl->n_windows);
    if (st->shuffle != 0 && st->shuffle != 1)
        return moe_err_set(err, "dataloader state: shuffle flag %d must be 0 or 1", st->shuffle);
    dl->st = *st;
    dl->st.reserved = 0;
    dl->order_epoch = -1;  // rebuilt lazily from (seed, epoch)
    return 0;
}

int dataloader_vocab_size(const DataLoader *dl) { return dl->vocab_size; }
int dataloader_n_domains(const DataLoader *dl) { return dl->n_domains; }
const char *dataloader_domain_name(const DataLoader *dl, int d) {
    return (d >= 0 && d < dl->n_domains) ? dl->domain_names[d] : "?";
}
int64_t dataloader_n_tokens(const DataLoader *dl) { return dl->n_tokens; }
