// BPE training: count distinct pre-split pieces ("words"), then merge the most frequent
// adjacent pair repeatedly. Pair counts are kept up to date incrementally (only the words
// that contain the merged pair are touched, through a per-pair list of word indices) and
// the best pair comes from a max-heap with lazy invalidation: an entry whose count is out of
// date is re-pushed with the current count when it reaches the top.
// Ties: higher count first, then the smaller (a, b) id pair. Ids 0..255 are the bytes, so
// the result depends only on the multiset of words, not on how the corpus was fed.
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

typedef struct {
    uint64_t h;  // 0 = empty
    uint64_t off;
    uint32_t len;
    int64_t count;
} WordSlot;

typedef struct {
    int32_t a, b;
    int64_t count;
    int32_t *where;  // word indices (may hold stale ones; deduplicated against the last entry)
    int32_t n_where, cap_where;
    int32_t touched;  // step at which its count last increased
} Pair;

typedef struct {
    int64_t count;
    uint64_t key;  // a << 32 | b
} HeapItem;

struct TokTrainer {
    TokTrainConfig cfg;
    char **special;
    int n_special;
    Tokenizer *tok;  // holds the pre-tokenizer; becomes the result
    TokSplitter sp;
    // distinct words
    WordSlot *wslots;
    size_t wcap, wn;
    char *arena;
    size_t arena_n, arena_cap;
    int oom;
    int64_t invalid;
};

static void count_piece(void *ctx, const char *p, size_t n) {
    TokTrainer *tr = ctx;
    if (tr->oom || n == 0 || n > UINT32_MAX) return;
    if ((tr->wn + 1) * 2 > tr->wcap) {
        size_t cap = tr->wcap ? tr->wcap * 2 : (1 << 16);
        WordSlot *ns = calloc(cap, sizeof(WordSlot));
        if (!ns) { tr->oom = 1; return; }
        for (size_t i = 0; i < tr->wcap; i++) {
            if (!tr->wslots[i].h) continue;
            size_t j = tr->wslots[i].h & (cap - 1);
            while (ns[j].h) j = (j + 1) & (cap - 1);
            ns[j] = tr->wslots[i];
        }
        free(tr->wslots);
        tr->wslots = ns;
        tr->wcap = cap;
    }
    uint64_t h = tok_hash_bytes(p, n) | 1;
    size_t mask = tr->wcap - 1, i = h & mask;
    while (tr->wslots[i].h) {
        WordSlot *s = &tr->wslots[i];
        if (s->h == h && s->len == n && memcmp(tr->arena + s->off, p, n) == 0) {
            s->count++;
            return;
        }
        i = (i + 1) & mask;
    }
    if (tr->arena_n + n > tr->arena_cap) {
        size_t cap = tr->arena_cap ? tr->arena_cap * 2 : (1 << 20);
        while (cap < tr->arena_n + n) cap *= 2;
        char *na = realloc(tr->arena, cap);
        if (!na) { tr->oom = 1; return; }
        tr->arena = na;
        tr->arena_cap = cap;
    }
    memcpy(tr->arena + tr->arena_n, p, n);
    tr->wslots[i] = (WordSlot){h, tr->arena_n, (uint32_t)n, 1};
    tr->arena_n += n;
    tr->wn++;
}

void tok_train_config_default(TokTrainConfig *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->vocab_size = 8192;
    cfg->pattern = "gpt4";
    cfg->min_frequency = 2;
}

static const char *const DEFAULT_SPECIALS[3] = {"<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"};

TokTrainer *tok_trainer_new(const TokTrainConfig *cfg_in, MoeErr *err) {
    TokTrainConfig cfg;
    if (cfg_in) cfg = *cfg_in;
    else tok_train_config_default(&cfg);
    if (!cfg.pattern) cfg.pattern = "gpt4";
    if (cfg.min_frequency <= 0) cfg.min_frequency = 2;
    const char *const *sp = cfg.special_tokens ? cfg.special_tokens : DEFAULT_SPECIALS;
    int nsp = cfg.special_tokens ? cfg.n_special : 3;
    if (nsp < 0 || nsp > 1024) {
        moe_err_set(err, "tokenizer train: n_special %d out of range [0, 1024]", nsp);
        return NULL;
    }
    if (cfg.vocab_size < 256 + nsp || cfg.vocab_size > (1 << 24)) {
        moe_err_set(err, "tokenizer train: vocab_size %d must be in [256 + %d special tokens, %d]", cfg.vocab_size, nsp,
                    1 << 24);
        return NULL;
    }
    TokTrainer *tr = calloc(1, sizeof(TokTrainer));
    if (!tr) goto oom;
    tr->cfg = cfg;
    tr->special = calloc((size_t)(nsp ? nsp : 1), sizeof(char *));
    if (!tr->special) goto oom;
    for (int i = 0; i < nsp; i++) {
        if (!sp[i] || !sp[i][0]) {
            tok_trainer_free(tr);
            moe_err_set(err, "tokenizer train: special token %d is empty", i);
            return NULL;
        }
        for (int j = 0; j < i; j++)
            if (strcmp(sp[i], sp[j]) == 0) {
                tok_trainer_free(tr);
                moe_err_set(err, "tokenizer train: special token '%s' given twice", sp[i]);
                return NULL;
            }
        tr->special[i] = strdup(sp[i]);
        if (!tr->special[i]) goto oom;
        tr->n_special++;
    }
    tr->tok = calloc(1, sizeof(Tokenizer));
    if (!tr->tok || tok_splitter_init(&tr->sp) != 0) goto oom;
    tr->tok->unk_id = -1;
    if (tok_steps_for_pattern(tr->tok, cfg.pattern, err) != 0) {
        tok_trainer_free(tr);
        return NULL;
    }
    return tr;
oom:
    tok_trainer_free(tr);
    moe_err_set(err, "tokenizer train: out of memory");
    return NULL;
}

void tok_trainer_free(TokTrainer *tr) {
    if (!tr) return;
    for (int i = 0; i < tr->n_special; i++) free(tr->special[i]);
    free(tr->special);
    tokenizer_free(tr->tok);
    tok_splitter_free(&tr->sp);
    free(tr->wslots);
    free(tr->arena);
    free(tr);
}

int tok_trainer_feed(TokTrainer *tr, const void *text, size_t n, MoeErr *err) {
    int64_t inv = tok_presplit(tr->tok, &tr->sp, text, n, count_piece, tr);
    if (inv < 0 || tr->oom) return moe_err_set(err, "tokenizer train: out of memory counting words");
    tr->invalid += inv;
    return 0;
}

// ---------------------------------------------------------------------------------------
// Merging

typedef struct {
    // words
    int32_t *sym;      // all symbols, word w at [off[w], off[w] + len[w])
    int64_t *off;
    int32_t *len;
    int64_t *freq;
    size_t n_words;
    // pairs
    Pair *pairs;
    size_t n_pairs, cap_pairs;
    uint64_t *pkeys;   // hash table: key+1 (0 empty)
    int32_t *pidx;
    size_t pcap;
    // heap
    HeapItem *heap;
    size_t hn, hcap;
    // touched pairs of the current step
    int32_t *touched;
    size_t n_touched, cap_touched;
    int oom;
} MergeState;

static inline uint64_t pkey(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static int pair_table_grow(MergeState *s) {
    size_t cap = s->pcap ? s->pcap * 2 : (1 << 16);
    uint64_t *k = calloc(cap, sizeof(uint64_t));
    int32_t *v = malloc(cap * sizeof(int32_t));
    if (!k || !v) {
        free(k);
        free(v);
        return -1;
    }
    for (size_t i = 0; i < s->pcap; i++) {
        if (!s->pkeys[i]) continue;
        size_t j = tok_mix64(s->pkeys[i]) & (cap - 1);
        while (k[j]) j = (j + 1) & (cap - 1);
        k[j] = s->pkeys[i];
        v[j] = s->pidx[i];
    }
    free(s->pkeys);
    free(s->pidx);
    s->pkeys = k;
    s->pidx = v;
    s->pcap = cap;
    return 0;
}

// index of pair (a, b), created (count 0) when absent; -1 on out of memory
static int32_t pair_get(MergeState *s, int32_t a, int32_t b, int create) {
    uint64_t key = pkey(a, b) + 1;
    if (s->pcap) {
        size_t mask = s->pcap - 1, i = tok_mix64(key) & mask;
        while (s->pkeys[i]) {
            if (s->pkeys[i] == key) return s->pidx[i];
            i = (i + 1) & mask;
        }
    }
    if (!create) return -1;
    if ((s->n_pairs + 1) * 2 > s->pcap && pair_table_grow(s) != 0) return -1;
    if (s->n_pairs == s->cap_pairs) {
        size_t cap = s->cap_pairs ? s->cap_pairs * 2 : (1 << 16);
        Pair *np = realloc(s->pairs, cap * sizeof(Pair));
        if (!np) return -1;
        s->pairs = np;
        s->cap_pairs = cap;
    }
    size_t mask = s->pcap - 1, i = tok_mix64(key) & mask;
    while (s->pkeys[i]) i = (i + 1) & mask;
    s->pkeys[i] = key;
    s->pidx[i] = (int32_t)s->n_pairs;
    s->pairs[s->n_pairs] = (Pair){a, b, 0, NULL, 0, 0, -1};
    return (int32_t)s->n_pairs++;
}

static int where_add(Pair *p, int32_t w) {
    if (p->n_where && p->where[p->n_where - 1] == w) return 0;
    if (p->n_where == p->cap_where) {
        int32_t cap = p->cap_where ? p->cap_where * 2 : 4;
        int32_t *nw = realloc(p->where, (size_t)cap * sizeof(int32_t));
        if (!nw) return -1;
        p->where = nw;
        p->cap_where = cap;
    }
    p->where[p->n_where++] = w;
    return 0;
}

static inline int heap_better(const HeapItem *x, const HeapItem *y) {
    return x->count > y->count || (x->count == y->count && x->key < y->key);
}

static int heap_push(MergeState *s, int64_t count, uint64_t key) {
    if (s->hn == s->hcap) {
        size_t cap = s->hcap ? s->hcap * 2 : (1 << 16);
        HeapItem *h = realloc(s->heap, cap * sizeof(HeapItem));
        if (!h) return -1;
        s->heap = h;
        s->hcap = cap;
    }
    HeapItem v = {count, key};
    size_t i = s->hn++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_better(&v, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = v;
    return 0;
}

static HeapItem heap_pop(MergeState *s) {
    HeapItem top = s->heap[0], v = s->heap[--s->hn];
    size_t i = 0, n = s->hn;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_better(&s->heap[c + 1], &s->heap[c])) c++;
        if (!heap_better(&s->heap[c], &v)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = v;
    return top;
}

// add delta to pair (a, b) for word w; increments record the word and the pair as touched
static void pair_add(MergeState *s, int32_t a, int32_t b, int64_t delta, int32_t w, int32_t step) {
    int32_t pi = pair_get(s, a, b, delta > 0);
    if (pi < 0) {
        if (delta > 0) s->oom = 1;
        return;
    }
    Pair *p = &s->pairs[pi];
    p->count += delta;
    if (delta > 0) {
        if (where_add(p, w)) s->oom = 1;
        if (p->touched != step) {
            p->touched = step;
            if (s->n_touched == s->cap_touched) {
                size_t cap = s->cap_touched ? s->cap_touched * 2 : 1024;
                int32_t *t = realloc(s->touched, cap * sizeof(int32_t));
                if (!t) { s->oom = 1; return; }
                s->touched = t;
                s->cap_touched = cap;
            }
            s->touched[s->n_touched++] = pi;
        }
    }
}

// Merge every (a, b) in word w into c, updating neighbour pair counts.
static void merge_word(MergeState *s, int32_t w, int32_t a, int32_t b, int32_t c, int32_t step) {
    int32_t *sym = s->sym + s->off[w];
    int32_t n = s->len[w], o = 0;
    int64_t f = s->freq[w];
    for (int32_t i = 0; i < n;) {
        if (i + 1 < n && sym[i] == a && sym[i + 1] == b) {
            if (o > 0) {
                pair_add(s, sym[o - 1], a, -f, w, step);
                pair_add(s, sym[o - 1], c, f, w, step);
            }
            if (i + 2 < n) {
                pair_add(s, b, sym[i + 2], -f, w, step);
                pair_add(s, c, sym[i + 2], f, w, step);
            }
            sym[o++] = c;
            i += 2;
        } else {
            sym[o++] = sym[i++];
        }
    }
    s->len[w] = o;
}

static void merge_state_free(MergeState *s) {
    free(s->sym);
    free(s->off);
    free(s->len);
    free(s->freq);
    for (size_t i = 0; i < s->n_pairs; i++) free(s->pairs[i].where);
    free(s->pairs);
    free(s->pkeys);
    free(s->pidx);
    free(s->heap);
    free(s->touched);
}

// sort words by bytes so that word indices (and so everything after) do not depend on
// the hash table layout
static const char *g_sort_arena;
static int cmp_word(const void *x, const void *y) {
    const WordSlot *a = x, *b = y;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(g_sort_arena + a->off, g_sort_arena + b->off, n);
    if (c) return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

Tokenizer *tok_trainer_finish(TokTrainer *tr, MoeErr *err) {
    MergeState s = {0};
    Tokenizer *tok = tr->tok;
    char **tbytes = NULL;  // bytes of every token id
    uint32_t *tlen = NULL;
    int32_t (*merges)[3] = NULL;
    TokStrMap bmap = {0};
    int verbose = tr->cfg.verbose;
    double t0 = wall_seconds();
    int32_t target = tr->cfg.vocab_size - tr->n_special;  // tokens from bytes + merges
    int32_t max_merges = target - 256;

    // compact the words, sorted
    WordSlot *words = malloc((tr->wn ? tr->wn : 1) * sizeof(WordSlot));
    if (!words) goto oom;
    size_t nw = 0, total_sym = 0;
    for (size_t i = 0; i < tr->wcap; i++)
        if (tr->wslots[i].h) {
            words[nw++] = tr->wslots[i];
            total_sym += tr->wslots[i].len;
        }
    g_sort_arena = tr->arena;
    qsort(words, nw, sizeof(WordSlot), cmp_word);
    s.n_words = nw;
    s.sym = malloc((total_sym ? total_sym : 1) * sizeof(int32_t));
    s.off = malloc((nw ? nw : 1) * sizeof(int64_t));
    s.len = malloc((nw ? nw : 1) * sizeof(int32_t));
    s.freq = malloc((nw ? nw : 1) * sizeof(int64_t));
    tbytes = calloc((size_t)target, sizeof(char *));
    tlen = calloc((size_t)target, sizeof(uint32_t));
    merges = malloc((size_t)(max_merges > 0 ? max_merges : 1) * sizeof(*merges));
    if (!s.sym || !s.off || !s.len || !s.freq || !tbytes || !tlen || !merges) {
        free(words);
        goto oom;
    }
    {
        size_t o = 0;
        for (size_t w = 0; w < nw; w++) {
            s.off[w] = (int64_t)o;
            s.len[w] = (int32_t)words[w].len;
            s.freq[w] = words[w].count;
            const unsigned char *p = (const unsigned char *)tr->arena + words[w].off;
            for (uint32_t k = 0; k < words[w].len; k++) s.sym[o++] = p[k];
        }
    }
    free(words);
    if (tok_strmap_init(&bmap, (size_t)target) != 0) goto oom;
    for (int b = 0; b < 256; b++) {
        tbytes[b] = malloc(1);
        if (!tbytes[b]) goto oom;
        tbytes[b][0] = (char)b;
        tlen[b] = 1;
        if (tok_strmap_put(&bmap, tbytes[b], 1, b) != 0) goto oom;
    }
    int32_t n_tok = 256, n_merges = 0;
    // initial pair counts
    for (size_t w = 0; w < nw; w++) {
        const int32_t *sym = s.sym + s.off[w];
        for (int32_t i = 0; i + 1 < s.len[w]; i++) pair_add(&s, sym[i], sym[i + 1], s.freq[w], (int32_t)w, -2);
    }
    if (s.oom) goto oom;
    for (size_t i = 0; i < s.n_pairs; i++)
        if (s.pairs[i].count > 0 && heap_push(&s, s.pairs[i].count, pkey(s.pairs[i].a, s.pairs[i].b))) goto oom;
    s.n_touched = 0;
    if (verbose)
        fprintf(stderr, "tokenizer train: %zu distinct words, %zu symbols, %zu pairs (%.2f s)\n", nw, total_sym,
                s.n_pairs, wall_seconds() - t0);

    while (n_tok < target && n_merges < max_merges && s.hn > 0) {
        HeapItem top = heap_pop(&s);
        int32_t a = (int32_t)(top.key >> 32), b = (int32_t)(top.key & 0xFFFFFFFFu);
        int32_t pi = pair_get(&s, a, b, 0);
        if (pi < 0) continue;
        Pair *p = &s.pairs[pi];
        if (p->count != top.count) {  // stale: re-queue with the current count
            if (p->count > 0 && heap_push(&s, p->count, top.key)) goto oom;
            continue;
        }
        if (p->count < tr->cfg.min_frequency) break;
        // the new token
        size_t la = tlen[a], lb = tlen[b];
        char *nb = malloc(la + lb);
        if (!nb) goto oom;
        memcpy(nb, tbytes[a], la);
        memcpy(nb + la, tbytes[b], lb);
        int32_t c = tok_strmap_get(&bmap, nb, la + lb);
        if (c < 0) {
            c = n_tok++;
            tbytes[c] = nb;
            tlen[c] = (uint32_t)(la + lb);
            if (tok_strmap_put(&bmap, tbytes[c], tlen[c], c) != 0) goto oom;
        } else {
            free(nb);
        }
        merges[n_merges][0] = a;
        merges[n_merges][1] = b;
        merges[n_merges][2] = c;
        n_merges++;
        // apply to the words that contain the pair (take the list: p may move on realloc)
        int32_t *where = p->where, n_where = p->n_where;
        p->where = NULL;
        p->n_where = p->cap_where = 0;
        s.n_touched = 0;
        for (int32_t k = 0; k < n_where; k++) merge_word(&s, where[k], a, b, c, n_merges);
        free(where);
        s.pairs[pi].count = 0;
        if (s.oom) goto oom;
        for (size_t k = 0; k < s.n_touched; k++) {
            Pair *q = &s.pairs[s.touched[k]];
            if (q->count > 0 && heap_push(&s, q->count, pkey(q->a, q->b))) goto oom;
        }
        if (verbose && n_merges % 1000 == 0)
            fprintf(stderr, "tokenizer train: %d merges, last count %lld (%.2f s)\n", n_merges, (long long)top.count,
                    wall_seconds() - t0);
    }
    if (verbose)
        fprintf(stderr, "tokenizer train: %d merges, %d tokens + %d special (%.2f s)\n", n_merges, n_tok, tr->n_special,
                wall_seconds() - t0);

    // build the tokenizer
    if (tok_alloc_vocab(tok, n_tok + tr->n_special) != 0) goto oom;
    for (int32_t id = 0; id < n_tok; id++) {
        char *text = tok_bytes_to_text(tbytes[id], tlen[id]);
        if (!text) goto oom;
        tok->tok_text[id] = text;
        tok->tok_bytes[id] = tbytes[id];
        tbytes[id] = NULL;
        tok->tok_len[id] = tlen[id];
        tok->is_pure[id] = 1;
        tok->in_model[id] = 1;
    }
    tok->added = calloc((size_t)(tr->n_special ? tr->n_special : 1), sizeof(TokAdded));
    if (!tok->added) goto oom;
    for (int i = 0; i < tr->n_special; i++) {
        int32_t id = n_tok + i;
        TokAdded *ad = &tok->added[tok->n_added++];
        ad->id = id;
        ad->len = (uint32_t)strlen(tr->special[i]);
        ad->content = strdup(tr->special[i]);
        ad->special = 1;
        if (!ad->content || tok_set_token_text(tok, id, ad->content, ad->len) != 0) goto oom;
        memcpy(tok->tok_bytes[id], ad->content, ad->len);
        tok->tok_len[id] = ad->len;
        tok->in_model[id] = 1;
    }
    tok->merges = merges;
    tok->n_merges = n_merges;
    merges = NULL;
    if (tok_finalize(tok, "tokenizer train", err) != 0) goto fail;
    tr->tok = NULL;  // handed to the caller
    for (int32_t i = 0; i < target; i++) free(tbytes[i]);
    free(tbytes);
    free(tlen);
    tok_strmap_free(&bmap);
    merge_state_free(&s);
    return tok;
oom:
    moe_err_set(err, "tokenizer train: out of memory");
fail:
    if (tbytes)
        for (int32_t i = 0; i < target; i++) free(tbytes[i]);
    free(tbytes);
    free(tlen);
    free(merges);
    tok_strmap_free(&bmap);
    merge_state_free(&s);
    return NULL;
}

Tokenizer *tokenizer_train(const char *const *texts, const size_t *lens, size_t n_texts, const TokTrainConfig *cfg,
                           MoeErr *err) {
    TokTrainer *tr = tok_trainer_new(cfg, err);
    if (!tr) return NULL;
    for (size_t i = 0; i < n_texts; i++)
        if (tok_trainer_feed(tr, texts[i], lens[i], err) != 0) {
            tok_trainer_free(tr);
            return NULL;
        }
    Tokenizer *tok = tok_trainer_finish(tr, err);
    tok_trainer_free(tr);
    return tok;
}
