// .trace writer and reader; the format is described in trace.h.
#include "trace.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define TRACE_FIXED_BYTES 176  // magic..dataset

// ---------------------------------------------------------------------------------------
// little-endian byte helpers

static void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_f32(uint8_t *p, float f) {
    uint32_t v;
    memcpy(&v, &f, 4);
    put_u32(p, v);
}
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static float get_f32(const uint8_t *p) {
    uint32_t v = get_u32(p);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

// ---------------------------------------------------------------------------------------

size_t trace_record_bytes(const TraceHeader *h) {
    size_t MK = (size_t)h->n_layers * (size_t)h->K;
    size_t r = 16 + MK * 6;
    if (h->has_reuse) r += (size_t)(h->n_layers - 1) * (size_t)h->K * 2;
    return r;
}

static size_t header_bytes(const TraceHeader *h) {
    return TRACE_FIXED_BYTES + 4 * (size_t)h->n_layers + TRACE_DOMAIN_LEN * (size_t)h->n_domains + 4;
}

static int name_ok(const char *s, size_t cap) { return memchr(s, '\0', cap) != NULL; }

int trace_header_check(const TraceHeader *h, const char *what, MoeErr *err) {
    if (h->E < 1 || h->E > 65535) return moe_err_set(err, "%s: E = %d out of range 1..65535", what, h->E);
    if (h->K < 1 || h->K > h->E || h->K > TRACE_MAX_K)
        return moe_err_set(err, "%s: K = %d out of range 1..min(E=%d, %d)", what, h->K, h->E, TRACE_MAX_K);
    if (h->n_layers < 1 || h->n_layers > TRACE_MAX_LAYERS)
        return moe_err_set(err, "%s: n_layers = %d out of range 1..%d", what, h->n_layers, TRACE_MAX_LAYERS);
    if (h->n_domains < 1 || h->n_domains > TRACE_MAX_DOMAINS)
        return moe_err_set(err, "%s: n_domains = %d out of range 1..%d", what, h->n_domains, TRACE_MAX_DOMAINS);
    if (h->has_reuse != 0 && h->has_reuse != 1) return moe_err_set(err, "%s: has_reuse must be 0 or 1", what);
    if (!name_ok(h->model, TRACE_NAME_LEN)) return moe_err_set(err, "%s: model name not terminated", what);
    if (!name_ok(h->dataset, TRACE_NAME_LEN)) return moe_err_set(err, "%s: dataset name not terminated", what);
    for (int l = 0; l < h->n_layers; l++) {
        if (h->layer_idx[l] < 0) return moe_err_set(err, "%s: layer_idx[%d] = %d negative", what, l, h->layer_idx[l]);
        if (l > 0 && h->layer_idx[l] <= h->layer_idx[l - 1])
            return moe_err_set(err, "%s: layer_idx[%d] = %d not increasing", what, l, h->layer_idx[l]);
    }
    for (int d = 0; d < h->n_domains; d++)
        if (!name_ok(h->domains[d], TRACE_DOMAIN_LEN))
            return moe_err_set(err, "%s: domain name %d not terminated", what, d);
    return 0;
}

static void encode_header(const TraceHeader *h, uint64_t n_records, uint8_t *buf) {
    size_t hb = header_bytes(h);
    memset(buf, 0, hb);
    memcpy(buf, TRACE_MAGIC, 8);
    put_u32(buf + 8, TRACE_VERSION);
    put_u32(buf + 12, (uint32_t)hb);
    put_u32(buf + 16, (uint32_t)h->E);
    put_u32(buf + 20, (uint32_t)h->K);
    put_u32(buf + 24, (uint32_t)h->n_layers);
    put_u32(buf + 28, h->has_reuse ? TRACE_FLAG_REUSE : 0u);
    put_u32(buf + 32, (uint32_t)h->n_domains);
    put_u32(buf + 36, (uint32_t)trace_record_bytes(h));
    put_u64(buf + 40, n_records);
    memcpy(buf + 48, h->model, strnlen(h->model, TRACE_NAME_LEN - 1));
    memcpy(buf + 112, h->dataset, strnlen(h->dataset, TRACE_NAME_LEN - 1));
    uint8_t *p = buf + TRACE_FIXED_BYTES;
    for (int l = 0; l < h->n_layers; l++, p += 4) put_u32(p, (uint32_t)h->layer_idx[l]);
    for (int d = 0; d < h->n_domains; d++, p += TRACE_DOMAIN_LEN)
        memcpy(p, h->domains[d], strnlen(h->domains[d], TRACE_DOMAIN_LEN - 1));
    put_u32(p, crc32c(0, buf, hb - 4));
}

// ---------------------------------------------------------------------------------------
// writer

struct TraceWriter {
    TraceHeader h;
    char path[4096];
    char tmp[4200];
    FILE *fp;
    uint8_t *rec;  // one encoded record
    size_t rec_bytes;
    uint64_t n;
    uint32_t crc;
};

TraceWriter *trace_writer_open(const char *path, const TraceHeader *h, MoeErr *err) {
    if (trace_header_check(h, path, err)) return NULL;
    if (strlen(path) >= 4096) {
        moe_err_set(err, "trace path too long: '%s'", path);
        return NULL;
    }
    TraceWriter *w = calloc(1, sizeof(*w));
    if (!w) {
        moe_err_set(err, "%s: out of memory", path);
        return NULL;
    }
    w->h = *h;
    snprintf(w->path, sizeof w->path, "%s", path);
    snprintf(w->tmp, sizeof w->tmp, "%s.tmp", path);
    w->rec_bytes = trace_record_bytes(h);
    w->rec = calloc(1, w->rec_bytes);
    size_t hb = header_bytes(h);
    uint8_t *hbuf = calloc(1, hb);
    w->fp = fopen(w->tmp, "wb");
    if (!w->rec || !hbuf || !w->fp) {
        moe_err_set(err, "%s: cannot create '%s': %s", path, w->tmp, w->fp ? "out of memory" : strerror(errno));
        if (w->fp) {
            fclose(w->fp);
            unlink(w->tmp);
        }
        free(hbuf);
        free(w->rec);
        free(w);
        return NULL;
    }
    encode_header(h, 0, hbuf);  // counts are zero here; the header is rewritten at close
    size_t put = fwrite(hbuf, 1, hb, w->fp);
    free(hbuf);
    if (put != hb) {
        moe_err_set(err, "%s: cannot write header to '%s'", path, w->tmp);
        trace_writer_abort(w);
        return NULL;
    }
    return w;
}

uint64_t trace_writer_count(const TraceWriter *w) { return w->n; }

int trace_writer_append(TraceWriter *w, uint32_t seq, uint32_t pos, uint32_t token, uint16_t domain,
                        const uint16_t *ids, const float *weights, const uint16_t *reuse, MoeErr *err) {
    const TraceHeader *h = &w->h;
    int M = h->n_layers, K = h->K;
    if (domain >= h->n_domains)
        return moe_err_set(err, "%s: record %llu: domain %u >= n_domains %d", w->path, (unsigned long long)w->n,
                           domain, h->n_domains);
    if (h->has_reuse && !reuse)
        return moe_err_set(err, "%s: record %llu: header says gate-reuse field but none given", w->path,
                           (unsigned long long)w->n);
    for (int i = 0; i < M * K; i++) {
        if (ids[i] >= h->E)
            return moe_err_set(err, "%s: record %llu: layer %d expert id %u >= E %d", w->path,
                               (unsigned long long)w->n, i / K, ids[i], h->E);
        if (!isfinite(weights[i]))
            return moe_err_set(err, "%s: record %llu: layer %d gate weight not finite", w->path,
                               (unsigned long long)w->n, i / K);
    }
    uint8_t *p = w->rec;
    put_u32(p, seq);
    put_u32(p + 4, pos);
    put_u32(p + 8, token);
    put_u16(p + 12, domain);
    put_u16(p + 14, 0);
    p += 16;
    for (int i = 0; i < M * K; i++, p += 2) put_u16(p, ids[i]);
    for (int i = 0; i < M * K; i++, p += 4) put_f32(p, weights[i]);
    if (h->has_reuse) {
        for (int i = 0; i < (M - 1) * K; i++, p += 2) {
            if (reuse[i] >= h->E)
                return moe_err_set(err, "%s: record %llu: reuse layer %d expert id %u >= E %d", w->path,
                                   (unsigned long long)w->n, i / K, reuse[i], h->E);
            put_u16(p, reuse[i]);
        }
    }
    if (fwrite(w->rec, 1, w->rec_bytes, w->fp) != w->rec_bytes)
        return moe_err_set(err, "%s: cannot write record %llu to '%s': %s", w->path, (unsigned long long)w->n,
                           w->tmp, strerror(errno));
    w->crc = crc32c(w->crc, w->rec, w->rec_bytes);
    w->n++;
    return 0;
}

void trace_writer_abort(TraceWriter *w) {
    if (!w) return;
    if (w->fp) fclose(w->fp);
    unlink(w->tmp);
    free(w->rec);
    free(w);
}

static void fsync_parent(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    int fd = open(dirname(buf), O_RDONLY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int trace_writer_close(TraceWriter *w, MoeErr *err) {
    size_t hb = header_bytes(&w->h);
    uint8_t *hbuf = calloc(1, hb);
    uint8_t tr[4];
    put_u32(tr, w->crc);
    int ok = hbuf != NULL;
    if (ok) {
        encode_header(&w->h, w->n, hbuf);
        ok = fwrite(tr, 1, 4, w->fp) == 4 && fseek(w->fp, 0, SEEK_SET) == 0 && fwrite(hbuf, 1, hb, w->fp) == hb &&
             fflush(w->fp) == 0 && fsync(fileno(w->fp)) == 0;
    }
    free(hbuf);
    if (!ok) {
        moe_err_set(err, "%s: cannot finish '%s': %s", w->path, w->tmp, strerror(errno));
        trace_writer_abort(w);
        return -1;
    }
    int rc = fclose(w->fp);
    w->fp = NULL;
    if (rc != 0 || rename(w->tmp, w->path) != 0) {
        moe_err_set(err, "%s: cannot close/rename '%s': %s", w->path, w->tmp, strerror(errno));
        trace_writer_abort(w);
        return -1;
    }
    fsync_parent(w->path);
    free(w->rec);
    free(w);
    return 0;
}

// ---------------------------------------------------------------------------------------
// reader

void trace_free(Trace *t) {
    free(t->seq);
    free(t->pos);
    free(t->token);
    free(t->domain);
    free(t->ids);
    free(t->weights);
    free(t->reuse);
    memset(t, 0, sizeof(*t));
}

int trace_alloc(Trace *t, const TraceHeader *h, size_t n, MoeErr *err) {
    memset(t, 0, sizeof(*t));
    if (trace_header_check(h, "trace", err)) return -1;
    t->h = *h;
    t->n = n;
    size_t MK = (size_t)h->n_layers * (size_t)h->K;
    size_t n1 = n ? n : 1;
    t->seq = calloc(n1, sizeof(uint32_t));
    t->pos = calloc(n1, sizeof(uint32_t));
    t->token = calloc(n1, sizeof(uint32_t));
    t->domain = calloc(n1, sizeof(uint16_t));
    t->ids = calloc(n1 * MK, sizeof(uint16_t));
    t->weights = calloc(n1 * MK, sizeof(float));
    if (h->has_reuse) t->reuse = calloc(n1 * (size_t)(h->n_layers > 1 ? h->n_layers - 1 : 1) * h->K, sizeof(uint16_t));
    if (!t->seq || !t->pos || !t->token || !t->domain || !t->ids || !t->weights || (h->has_reuse && !t->reuse)) {
        trace_free(t);
        return moe_err_set(err, "trace: out of memory for %zu records", n);
    }
    return 0;
}

int trace_write(const char *path, const Trace *t, MoeErr *err) {
    TraceWriter *w = trace_writer_open(path, &t->h, err);
    if (!w) return -1;
    size_t MK = (size_t)t->h.n_layers * t->h.K, RK = (size_t)(t->h.n_layers - 1) * t->h.K;
    for (size_t i = 0; i < t->n; i++) {
        if (trace_writer_append(w, t->seq[i], t->pos[i], t->token[i], t->domain[i], t->ids + i * MK,
                                t->weights + i * MK, t->reuse ? t->reuse + i * RK : NULL, err)) {
            trace_writer_abort(w);
            return -1;
        }
    }
    return trace_writer_close(w, err);
}

static int decode(const char *path, const uint8_t *buf, size_t size, Trace *t, MoeErr *err) {
    if (size < TRACE_FIXED_BYTES + 8)
        return moe_err_set(err, "%s: file too short (%zu bytes) for a trace header", path, size);
    if (memcmp(buf, TRACE_MAGIC, 8) != 0) return moe_err_set(err, "%s: bad magic (not a .trace file)", path);
    uint32_t version = get_u32(buf + 8);
    if (version != TRACE_VERSION)
        return moe_err_set(err, "%s: unsupported version %u (expected %u)", path, version, TRACE_VERSION);
    TraceHeader h;
    memset(&h, 0, sizeof h);
    uint32_t hb = get_u32(buf + 12), E = get_u32(buf + 16), K = get_u32(buf + 20), M = get_u32(buf + 24);
    uint32_t flags = get_u32(buf + 28), D = get_u32(buf + 32), rb = get_u32(buf + 36);
    uint64_t n = get_u64(buf + 40);
    if (E < 1 || E > 65535) return moe_err_set(err, "%s: header field E = %u out of range", path, E);
    if (K < 1 || K > E || K > TRACE_MAX_K) return moe_err_set(err, "%s: header field K = %u out of range", path, K);
    if (M < 1 || M > TRACE_MAX_LAYERS) return moe_err_set(err, "%s: header field n_layers = %u out of range", path, M);
    if (D < 1 || D > TRACE_MAX_DOMAINS)
        return moe_err_set(err, "%s: header field n_domains = %u out of range", path, D);
    if (flags & ~TRACE_FLAG_REUSE) return moe_err_set(err, "%s: header field flags = %#x has unknown bits", path, flags);
    h.E = (int)E;
    h.K = (int)K;
    h.n_layers = (int)M;
    h.n_domains = (int)D;
    h.has_reuse = (flags & TRACE_FLAG_REUSE) ? 1 : 0;
    if (hb != header_bytes(&h))
        return moe_err_set(err, "%s: header field header_bytes = %u, expected %zu", path, hb, header_bytes(&h));
    if (size < (size_t)hb + 4) return moe_err_set(err, "%s: truncated header (%zu bytes, need %u)", path, size, hb + 4);
    if (get_u32(buf + hb - 4) != crc32c(0, buf, hb - 4)) return moe_err_set(err, "%s: header checksum mismatch", path);
    size_t rec = trace_record_bytes(&h);
    if (rb != rec) return moe_err_set(err, "%s: header field record_bytes = %u, expected %zu", path, rb, rec);
    memcpy(h.model, buf + 48, TRACE_NAME_LEN - 1);
    memcpy(h.dataset, buf + 112, TRACE_NAME_LEN - 1);
    const uint8_t *p = buf + TRACE_FIXED_BYTES;
    for (uint32_t l = 0; l < M; l++, p += 4) {
        uint32_t li = get_u32(p);
        if (li > 1000000) return moe_err_set(err, "%s: header field layer_idx[%u] = %u out of range", path, l, li);
        h.layer_idx[l] = (int)li;
    }
    for (uint32_t d = 0; d < D; d++, p += TRACE_DOMAIN_LEN) memcpy(h.domains[d], p, TRACE_DOMAIN_LEN - 1);
    if (trace_header_check(&h, path, err)) return -1;
    // sizes against the file length (overflow-safe: n must fit the body)
    size_t body = size - hb - 4;
    if (n > body / rec || n * rec != body) {
        return moe_err_set(err, "%s: truncated or oversized: header says %llu records of %zu bytes (%llu bytes), file "
                                "has %zu bytes of records",
                           path, (unsigned long long)n, rec, (unsigned long long)(n * rec), body);
    }
    const uint8_t *recs = buf + hb;
    if (get_u32(recs + body) != crc32c(0, recs, body))
        return moe_err_set(err, "%s: record checksum mismatch (file corrupted)", path);
    if (trace_alloc(t, &h, (size_t)n, err)) return -1;
    size_t MK = (size_t)M * K, RK = (size_t)(M - 1) * K;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *r = recs + i * rec;
        t->seq[i] = get_u32(r);
        t->pos[i] = get_u32(r + 4);
        t->token[i] = get_u32(r + 8);
        t->domain[i] = get_u16(r + 12);
        if (t->domain[i] >= D) {
            moe_err_set(err, "%s: record %zu: domain %u >= n_domains %u", path, i, t->domain[i], D);
            goto fail;
        }
        r += 16;
        uint16_t *ids = t->ids + i * MK;
        float *w = t->weights + i * MK;
        for (size_t j = 0; j < MK; j++) ids[j] = get_u16(r + 2 * j);
        r += 2 * MK;
        for (size_t j = 0; j < MK; j++) w[j] = get_f32(r + 4 * j);
        r += 4 * MK;
        for (uint32_t l = 0; l < M; l++) {
            for (uint32_t k = 0; k < K; k++) {
                uint16_t e = ids[l * K + k];
                if (e >= E) {
                    moe_err_set(err, "%s: record %zu (seq %u pos %u): layer %u expert id %u >= E %u", path, i,
                                t->seq[i], t->pos[i], l, e, E);
                    goto fail;
                }
                for (uint32_t k2 = 0; k2 < k; k2++)
                    if (ids[l * K + k2] == e) {
                        moe_err_set(err, "%s: record %zu: layer %u expert id %u chosen twice", path, i, l, e);
                        goto fail;
                    }
                if (!isfinite(w[l * K + k])) {
                    moe_err_set(err, "%s: record %zu: layer %u gate weight not finite", path, i, l);
                    goto fail;
                }
            }
        }
        if (h.has_reuse) {
            uint16_t *ru = t->reuse + i * RK;
            for (size_t j = 0; j < RK; j++) {
                ru[j] = get_u16(r + 2 * j);
                if (ru[j] >= E) {
                    moe_err_set(err, "%s: record %zu: gate-reuse layer %zu expert id %u >= E %u", path, i, j / K,
                                ru[j], E);
                    goto fail;
                }
            }
        }
    }
    return 0;
fail:
    trace_free(t);
    return -1;
}

int trace_read(const char *path, Trace *t, MoeErr *err) {
    memset(t, 0, sizeof(*t));
    int fd = open(path, O_RDONLY);
    if (fd < 0) return moe_err_set(err, "%s: cannot open trace: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return moe_err_set(err, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size == 0) {
        close(fd);
        return moe_err_set(err, "%s: empty file", path);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return moe_err_set(err, "%s: cannot mmap: %s", path, strerror(errno));
    int rc = decode(path, (const uint8_t *)map, size, t, err);
    munmap(map, size);
    return rc;
}

int trace_concat(Trace *out, const Trace *parts, int n_parts, const char *const *names, MoeErr *err) {
    memset(out, 0, sizeof(*out));
    if (n_parts < 1) return moe_err_set(err, "no traces given");
    TraceHeader h = parts[0].h;
    size_t n = 0;
    int dmap[64][TRACE_MAX_DOMAINS];
    if (n_parts > 64) return moe_err_set(err, "too many trace files (%d, at most 64)", n_parts);
    h.n_domains = 0;
    for (int j = 0; j < n_parts; j++) {
        const TraceHeader *p = &parts[j].h;
        int same = strcmp(p->model, h.model) == 0 && p->E == h.E && p->K == h.K && p->n_layers == h.n_layers &&
                   p->has_reuse == h.has_reuse;
        for (int l = 0; same && l < h.n_layers; l++) same = p->layer_idx[l] == h.layer_idx[l];
        if (!same)
            return moe_err_set(err, "%s: trace of model '%s' (E=%d K=%d, %d MoE layers%s) does not match %s ('%s', E=%d K=%d, %d MoE layers%s)",
                               names[j], p->model, p->E, p->K, p->n_layers, p->has_reuse ? ", gate reuse" : "",
                               names[0], h.model, h.E, h.K, h.n_layers, h.has_reuse ? ", gate reuse" : "");
        for (int d = 0; d < p->n_domains; d++) {
            int found = -1;
            for (int q = 0; q < h.n_domains; q++)
                if (!strcmp(h.domains[q], p->domains[d])) found = q;
            if (found < 0) {
                if (h.n_domains >= TRACE_MAX_DOMAINS) return moe_err_set(err, "too many domains over the traces");
                found = h.n_domains++;
                memcpy(h.domains[found], p->domains[d], TRACE_DOMAIN_LEN);
            }
            dmap[j][d] = found;
        }
        n += parts[j].n;
    }
    if (n_parts > 1) snprintf(h.dataset, sizeof h.dataset, "%d trace files", n_parts);
    if (trace_alloc(out, &h, n, err)) return -1;
    size_t MK = (size_t)h.n_layers * h.K, RK = (size_t)(h.n_layers - 1) * h.K, at = 0;
    uint64_t off = 0;
    for (int j = 0; j < n_parts; j++) {
        const Trace *p = &parts[j];
        uint64_t mx = 0;
        for (size_t i = 0; i < p->n; i++, at++) {
            uint64_t s = off + p->seq[i];
            if (s > UINT32_MAX) {
                trace_free(out);
                return moe_err_set(err, "%s: sequence ids overflow 32 bits after concatenation", names[j]);
            }
            out->seq[at] = (uint32_t)s;
            mx = p->seq[i] > mx ? p->seq[i] : mx;
            out->pos[at] = p->pos[i];
            out->token[at] = p->token[i];
            out->domain[at] = (uint16_t)dmap[j][p->domain[i]];
        }
        if (p->n) {
            memcpy(out->ids + (at - p->n) * MK, p->ids, sizeof(uint16_t) * p->n * MK);
            memcpy(out->weights + (at - p->n) * MK, p->weights, sizeof(float) * p->n * MK);
            if (h.has_reuse) memcpy(out->reuse + (at - p->n) * RK, p->reuse, sizeof(uint16_t) * p->n * RK);
        }
        off += p->n ? mx + 1 : 0;
    }
    return 0;
}
