// Token shards: writer (streamed to a temporary file, fsync, rename) and a validating
// mmap reader. Format: see shard.h.
#define _POSIX_C_SOURCE 200809L
#include "shard.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SHARD_HEADER_BYTES 64
#define SHARD_DOC_BYTES 16
#define SHARD_MAX_DOMAINS 65536

// ---------------------------------------------------------------------------------------
// little-endian helpers (the format is little-endian; these are explicit so that the
// code is correct on any host)

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const uint8_t *p) {
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

int shard_token_bytes_for_vocab(int vocab_size) { return vocab_size <= 65535 ? 2 : 4; }

// ---------------------------------------------------------------------------------------
// writer

typedef struct {
    FILE *fp;
    uint32_t crc;
    const char *tmp;
    MoeErr *err;
    int failed;
} ShardOut;

static void out_write(ShardOut *o, const void *data, size_t n, int checksum) {
    if (o->failed || n == 0) return;
    if (fwrite(data, 1, n, o->fp) != n) {
        o->failed = 1;
        moe_err_set(o->err, "cannot write '%s': %s", o->tmp, strerror(errno));
        return;
    }
    if (checksum) o->crc = crc32c(o->crc, data, n);
}

static int validate_write_args(const char *path, const uint32_t *tokens, int64_t n_tokens, int vocab_size,
                               int token_bytes, const int64_t *doc_start, const int32_t *doc_domain,
                               int64_t n_docs, const char *const *domain_names, int n_domains, MoeErr *err) {
    if (vocab_size <= 0) return moe_err_set(err, "shard '%s': vocab_size %d must be positive", path, vocab_size);
    if (token_bytes != 2 && token_bytes != 4)
        return moe_err_set(err, "shard '%s': token_bytes %d must be 2 or 4", path, token_bytes);
    if (token_bytes == 2 && vocab_size > 65535)
        return moe_err_set(err, "shard '%s': vocab_size %d is too large for 2-byte (uint16) token ids (max 65535)",
                           path, vocab_size);
    if (n_tokens < 0 || n_docs < 0)
        return moe_err_set(err, "shard '%s': negative n_tokens or n_docs", path);
    if (n_tokens > 0 && !tokens) return moe_err_set(err, "shard '%s': tokens is NULL", path);
    if (n_domains < 0 || n_domains > SHARD_MAX_DOMAINS)
        return moe_err_set(err, "shard '%s': n_domains %d out of range [0, %d]", path, n_domains, SHARD_MAX_DOMAINS);
    if (n_docs > 0 && n_domains == 0)
        return moe_err_set(err, "shard '%s': %lld documents but no domains", path, (long long)n_docs);
    if (n_tokens > 0 && n_docs == 0)
        return moe_err_set(err, "shard '%s': %lld tokens but no documents", path, (long long)n_tokens);
    for (int d = 0; d < n_domains; d++) {
        if (!domain_names || !domain_names[d]) return moe_err_set(err, "shard '%s': domain %d has no name", path, d);
        size_t len = strlen(domain_names[d]);
        if (len == 0 || len >= SHARD_DOMAIN_NAME_LEN)
            return moe_err_set(err, "shard '%s': domain name '%s' must be 1..%d bytes", path, domain_names[d],
                               SHARD_DOMAIN_NAME_LEN - 1);
    }
    for (int64_t i = 0; i < n_docs; i++) {
        if (i == 0 && doc_start[0] != 0)
            return moe_err_set(err, "shard '%s': doc_start[0] = %lld, must be 0", path, (long long)doc_start[0]);
        if (i > 0 && doc_start[i] < doc_start[i - 1])
            return moe_err_set(err, "shard '%s': doc_start[%lld] = %lld decreases", path, (long long)i,
                               (long long)doc_start[i]);
        if (doc_start[i] > n_tokens)
            return moe_err_set(err, "shard '%s': doc_start[%lld] = %lld beyond n_tokens %lld", path, (long long)i,
                               (long long)doc_start[i], (long long)n_tokens);
        if (doc_domain[i] < 0 || doc_domain[i] >= n_domains)
            return moe_err_set(err, "shard '%s': doc_domain[%lld] = %d not in [0, %d)", path, (long long)i,
                               doc_domain[i], n_domains);
    }
    for (int64_t i = 0; i < n_tokens; i++)
        if (tokens[i] >= (uint32_t)vocab_size)
            return moe_err_set(err, "shard '%s': token %lld has id %u >= vocab_size %d", path, (long long)i, tokens[i],
                               vocab_size);
    return 0;
}

int shard_write_ex(const char *path, const uint32_t *tokens, int64_t n_tokens, int vocab_size, int token_bytes,
                   const int64_t *doc_start, const int32_t *doc_domain, int64_t n_docs,
                   const char *const *domain_names, int n_domains, MoeErr *err) {
    if (token_bytes == 0) token_bytes = shard_token_bytes_for_vocab(vocab_size);
    if (validate_write_args(path, tokens, n_tokens, vocab_size, token_bytes, doc_start, doc_domain, n_docs,
                            domain_names, n_domains, err))
        return -1;
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
        return moe_err_set(err, "path too long: '%s'", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) return moe_err_set(err, "cannot create '%s': %s", tmp, strerror(errno));
    ShardOut o = {fp, 0, tmp, err, 0};

    uint8_t h[SHARD_HEADER_BYTES];
    memset(h, 0, sizeof(h));
    memcpy(h, SHARD_MAGIC, sizeof(SHARD_MAGIC));  // 7 chars + NUL
    put_u32(h + 8, SHARD_VERSION);
    put_u32(h + 12, (uint32_t)token_bytes);
    put_u32(h + 16, (uint32_t)vocab_size);
    put_u32(h + 20, (uint32_t)n_domains);
    put_u64(h + 24, (uint64_t)n_tokens);
    put_u64(h + 32, (uint64_t)n_docs);
    put_u32(h + 40, crc32c(0, h, 40));
    out_write(&o, h, sizeof(h), 0);

    for (int d = 0; d < n_domains; d++) {
        char name[SHARD_DOMAIN_NAME_LEN];
        memset(name, 0, sizeof(name));
        memcpy(name, domain_names[d], strlen(domain_names[d]));
        out_write(&o, name, sizeof(name), 1);
    }
    // buffered conversion of the doc table and tokens, 64 KiB at a time
    enum { CHUNK = 65536 };
    uint8_t *buf = (uint8_t *)malloc(CHUNK);
    if (!buf) {
        fclose(fp);
        unlink(tmp);
        return moe_err_set(err, "out of memory writing '%s'", path);
    }
    size_t fill = 0;
    for (int64_t i = 0; i < n_docs; i++) {
        put_u64(buf + fill, (uint64_t)doc_start[i]);
        put_u32(buf + fill + 8, (uint32_t)doc_domain[i]);
        put_u32(buf + fill + 12, 0);
        fill += SHARD_DOC_BYTES;
        if (fill == CHUNK) {
            out_write(&o, buf, fill, 1);
            fill = 0;
        }
    }
    out_write(&o, buf, fill, 1);
    fill = 0;
    for (int64_t i = 0; i < n_tokens; i++) {
        if (token_bytes == 2) {
            buf[fill] = (uint8_t)tokens[i];
            buf[fill + 1] = (uint8_t)(tokens[i] >> 8);
        } else {
            put_u32(buf + fill, tokens[i]);
        }
        fill += (size_t)token_bytes;
        if (fill == CHUNK) {
            out_write(&o, buf, fill, 1);
            fill = 0;
        }
    }
    out_write(&o, buf, fill, 1);
    free(buf);
    uint8_t c[4];
    put_u32(c, o.crc);
    out_write(&o, c, 4, 0);

    if (!o.failed && fflush(fp) != 0) {
        o.failed = 1;
        moe_err_set(err, "cannot write '%s': %s", tmp, strerror(errno));
    }
    if (!o.failed && fsync(fileno(fp)) != 0) {
        o.failed = 1;
        moe_err_set(err, "cannot fsync '%s': %s", tmp, strerror(errno));
    }
    if (fclose(fp) != 0 && !o.failed) {
        o.failed = 1;
        moe_err_set(err, "cannot close '%s': %s", tmp, strerror(errno));
    }
    if (o.failed) {
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return moe_err_set(err, "cannot rename '%s' to '%s': %s", tmp, path, strerror(e));
    }
    char dirbuf[4096];
    snprintf(dirbuf, sizeof(dirbuf), "%s", path);
    int dfd = open(dirname(dirbuf), O_RDONLY);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

int shard_write(const char *path, const uint32_t *tokens, int64_t n_tokens, int vocab_size,
                const int64_t *doc_start, const int32_t *doc_domain, int64_t n_docs,
                const char *const *domain_names, int n_domains, MoeErr *err) {
    return shard_write_ex(path, tokens, n_tokens, vocab_size, 0, doc_start, doc_domain, n_docs, domain_names,
                          n_domains, err);
}

// ---------------------------------------------------------------------------------------
// reader

void shard_close(Shard *s) {
    if (!s) return;
    if (s->map) munmap(s->map, s->map_len);
    free(s->domain_names);
    free(s->doc_start);
    free(s->doc_domain);
    memset(s, 0, sizeof(*s));
}

static int shard_fail(Shard *s, MoeErr *err, const char *fmt, ...) {
    if (err) {
        char msg[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        moe_err_set(err, "shard '%s': %s", s->path, msg);
    }
    shard_close(s);
    return -1;
}

int shard_open(Shard *s, const char *path, MoeErr *err) {
    memset(s, 0, sizeof(*s));
    snprintf(s->path, sizeof(s->path), "%s", path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return shard_fail(s, err, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return shard_fail(s, err, "not a regular file");
    }
    uint64_t len = (uint64_t)st.st_size;
    if (len < SHARD_HEADER_BYTES + 4) {
        close(fd);
        return shard_fail(s, err, "file is %llu bytes, shorter than the %d-byte header and checksum%s",
                          (unsigned long long)len, SHARD_HEADER_BYTES + 4, len == 0 ? " (empty file)" : "");
    }
    void *map = mmap(NULL, (size_t)len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return shard_fail(s, err, "mmap failed: %s", strerror(errno));
    s->map = map;
    s->map_len = (size_t)len;
    const uint8_t *h = (const uint8_t *)map;

    if (memcmp(h, SHARD_MAGIC, sizeof(SHARD_MAGIC)) != 0)
        return shard_fail(s, err, "bad magic (bytes 0-7), not a moe.c token shard");
    uint32_t version = get_u32(h + 8);
    if (version > SHARD_VERSION)
        return shard_fail(s, err, "format version %u is newer than this program supports (%d)", version,
                          SHARD_VERSION);
    if (version != SHARD_VERSION) return shard_fail(s, err, "unsupported format version %u", version);
    uint32_t hcrc = get_u32(h + 40);
    if (crc32c(0, h, 40) != hcrc) return shard_fail(s, err, "header checksum mismatch (header bytes 0-39 corrupted)");
    for (int k = 44; k < SHARD_HEADER_BYTES; k++)
        if (h[k] != 0) return shard_fail(s, err, "reserved header byte %d is not zero (corrupted?)", k);
    uint32_t token_bytes = get_u32(h + 12);
    uint32_t vocab = get_u32(h + 16);
    uint32_t n_domains = get_u32(h + 20);
    uint64_t n_tokens = get_u64(h + 24);
    uint64_t n_docs = get_u64(h + 32);
    if (token_bytes != 2 && token_bytes != 4) return shard_fail(s, err, "token_bytes %u must be 2 or 4", token_bytes);
    if (vocab == 0 || vocab > (uint32_t)INT32_MAX) return shard_fail(s, err, "vocab_size %u out of range", vocab);
    if (token_bytes == 2 && vocab > 65535)
        return shard_fail(s, err, "vocab_size %u does not fit 2-byte token ids", vocab);
    if (n_domains > SHARD_MAX_DOMAINS) return shard_fail(s, err, "n_domains %u too large", n_domains);
    // sizes against the file length, without overflow
    uint64_t body = len - SHARD_HEADER_BYTES - 4;
    if ((uint64_t)n_domains * SHARD_DOMAIN_NAME_LEN > body || n_docs > body / SHARD_DOC_BYTES ||
        n_tokens > body / token_bytes)
        return shard_fail(s, err, "file is truncated: header sizes (n_domains %u, n_docs %llu, n_tokens %llu) exceed "
                          "the file length %llu",
                          n_domains, (unsigned long long)n_docs, (unsigned long long)n_tokens,
                          (unsigned long long)len);
    uint64_t need = (uint64_t)n_domains * SHARD_DOMAIN_NAME_LEN + n_docs * SHARD_DOC_BYTES + n_tokens * token_bytes;
    if (need != body)
        return shard_fail(s, err,
                          "file length %llu does not match header (expected %llu bytes: n_domains %u, n_docs %llu, "
                          "n_tokens %llu x %u bytes)%s",
                          (unsigned long long)len, (unsigned long long)(need + SHARD_HEADER_BYTES + 4), n_domains,
                          (unsigned long long)n_docs, (unsigned long long)n_tokens, token_bytes,
                          need > body ? ", truncated?" : ", trailing bytes?");
    if (n_tokens > 0 && n_docs == 0) return shard_fail(s, err, "%llu tokens but no documents", (unsigned long long)n_tokens);
    if (n_docs > 0 && n_domains == 0) return shard_fail(s, err, "documents but no domains");
    const uint8_t *dom = h + SHARD_HEADER_BYTES;
    const uint8_t *docs = dom + (size_t)n_domains * SHARD_DOMAIN_NAME_LEN;
    const uint8_t *toks = docs + (size_t)n_docs * SHARD_DOC_BYTES;
    uint32_t crc = crc32c(0, dom, (size_t)body);
    uint32_t want = get_u32(h + len - 4);
    if (crc != want)
        return shard_fail(s, err, "data checksum mismatch (bytes %d-%llu corrupted)", SHARD_HEADER_BYTES,
                          (unsigned long long)(len - 5));

    s->token_bytes = (int)token_bytes;
    s->vocab_size = (int)vocab;
    s->n_domains = (int)n_domains;
    s->n_tokens = (int64_t)n_tokens;
    s->n_docs = (int64_t)n_docs;
    s->domain_names = calloc(n_domains ? n_domains : 1, SHARD_DOMAIN_NAME_LEN);
    s->doc_start = (int64_t *)malloc((n_docs ? n_docs : 1) * sizeof(int64_t));
    s->doc_domain = (int32_t *)malloc((n_docs ? n_docs : 1) * sizeof(int32_t));
    if (!s->domain_names || !s->doc_start || !s->doc_domain) return shard_fail(s, err, "out of memory");
    for (uint32_t d = 0; d < n_domains; d++) {
        const uint8_t *nm = dom + (size_t)d * SHARD_DOMAIN_NAME_LEN;
        if (nm[0] == 0 || memchr(nm, 0, SHARD_DOMAIN_NAME_LEN) == NULL)
            return shard_fail(s, err, "domain name %u is empty or not NUL-terminated", d);
        memcpy(s->domain_names[d], nm, SHARD_DOMAIN_NAME_LEN);
    }
    for (uint64_t i = 0; i < n_docs; i++) {
        const uint8_t *e = docs + i * SHARD_DOC_BYTES;
        uint64_t start = get_u64(e);
        uint32_t domain = get_u32(e + 8);
        if ((i == 0 && start != 0) || (i > 0 && (int64_t)start < s->doc_start[i - 1]) || start > n_tokens)
            return shard_fail(s, err, "doc table entry %llu: start_token %llu out of order or beyond n_tokens %llu",
                              (unsigned long long)i, (unsigned long long)start, (unsigned long long)n_tokens);
        if (domain >= n_domains)
            return shard_fail(s, err, "doc table entry %llu: domain %u >= n_domains %u", (unsigned long long)i, domain,
                              n_domains);
        s->doc_start[i] = (int64_t)start;
        s->doc_domain[i] = (int32_t)domain;
    }
    s->tokens = toks;
    for (int64_t i = 0; i < s->n_tokens; i++) {
        uint32_t t = shard_token(s, i);
        if (t >= vocab)
            return shard_fail(s, err, "token %lld (byte %llu) has id %u >= vocab_size %u", (long long)i,
                              (unsigned long long)(toks - h + (uint64_t)i * token_bytes), t, vocab);
    }
    return 0;
}

int shard_domain_at(const Shard *s, int64_t i) {
    if (s->n_docs == 0) return 0;
    // last document whose start <= i
    int64_t lo = 0, hi = s->n_docs - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        if (s->doc_start[mid] <= i)
            lo = mid;
        else
            hi = mid - 1;
    }
    return s->doc_domain[lo];
}
