// safetensors reader / writer. See safetensors.h.
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const dtype_names[ST_N_DTYPES] = {"F32", "F16", "BF16", "U8", "I8", "I32", "I64"};
static const int dtype_sizes[ST_N_DTYPES] = {4, 2, 2, 1, 1, 4, 8};

const char *st_dtype_name(int dtype) { return dtype >= 0 && dtype < ST_N_DTYPES ? dtype_names[dtype] : "?"; }
int st_dtype_size(int dtype) { return dtype >= 0 && dtype < ST_N_DTYPES ? dtype_sizes[dtype] : 0; }
int st_dtype_from_name(const char *s) {
    for (int i = 0; i < ST_N_DTYPES; i++)
        if (strcmp(s, dtype_names[i]) == 0) return i;
    return -1;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    int exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    union { uint32_t u; float f; } v;
    if (exp == 0) {
        float f = ldexpf((float)mant, -24);  // subnormal or zero
        return sign ? -f : f;
    } else if (exp == 31) {
        v.u = sign | 0x7f800000u | (mant << 13);
    } else {
        v.u = sign | ((uint32_t)(exp - 15 + 127) << 23) | (mant << 13);
    }
    return v.f;
}

uint16_t f32_to_f16(float f) {
    union { uint32_t u; float f; } v;
    v.f = f;
    uint32_t sign = (v.u >> 16) & 0x8000u;
    uint32_t a = v.u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);   // NaN
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // overflow -> inf (rounds past 65504)
    if (a < 0x38800000u) {                                     // subnormal half (or zero)
        float af = fabsf(f);
        uint32_t m = (uint32_t)lrintf(af * 16777216.0f);       // units of 2^-24, round to even
        return (uint16_t)(sign | m);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);                // round to nearest even
    return (uint16_t)(sign | (((r >> 23) - 127 + 15) << 10) | ((r >> 13) & 0x3ffu));
}

// ---------------------------------------------------------------------------------------
// Parsing

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const StTensor *)a)->name, ((const StTensor *)b)->name);
}
static int cmp_tensor_ptr_name(const void *a, const void *b) {
    return strcmp((*(const StTensor *const *)a)->name, (*(const StTensor *const *)b)->name);
}
static int cmp_tensor_ptr_begin(const void *a, const void *b) {
    const StTensor *x = *(const StTensor *const *)a, *y = *(const StTensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static void free_tensors(StTensor *t, int n) {
    if (!t) return;
    for (int i = 0; i < n; i++) free(t[i].name);
    free(t);
}

// a JSON number that is a non-negative integer representable exactly (< 2^53)
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

static int parse_entry(StTensor *t, const cJSON *e, const char *name, uint64_t data_len, MoeErr *err) {
    if (!cJSON_IsObject(e)) return moe_err_set(err, "%s: tensor '%s': entry is not a JSON object", name, t->name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd)) return moe_err_set(err, "%s: tensor '%s': missing or non-string field 'dtype'", name, t->name);
    t->dtype = st_dtype_from_name(jd->valuestring);
    if (t->dtype < 0)
        return moe_err_set(err, "%s: tensor '%s': unsupported dtype '%.32s' (supported: F32 F16 BF16 U8 I8 I32 I64)",
                           name, t->name, jd->valuestring);
    if (!cJSON_IsArray(js)) return moe_err_set(err, "%s: tensor '%s': missing or non-array field 'shape'", name, t->name);
    int nd = cJSON_GetArraySize(js);
    if (nd > ST_MAX_DIMS) return moe_err_set(err, "%s: tensor '%s': field 'shape' has %d dims (max %d)", name, t->name, nd, ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    for (int i = 0; i < nd; i++) {
        uint64_t d;
        if (!json_uint(cJSON_GetArrayItem(js, i), &d))
            return moe_err_set(err, "%s: tensor '%s': field 'shape'[%d] is not a non-negative integer", name, t->name, i);
        if (d > 0 && numel > (UINT64_MAX / 16) / d)
            return moe_err_set(err, "%s: tensor '%s': field 'shape' overflows", name, t->name);
        t->shape[i] = (int64_t)d;
        numel *= d;
    }
    t->numel = (int64_t)numel;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2)
        return moe_err_set(err, "%s: tensor '%s': field 'data_offsets' is not an array of 2 integers", name, t->name);
    if (!json_uint(cJSON_GetArrayItem(jo, 0), &t->begin) || !json_uint(cJSON_GetArrayItem(jo, 1), &t->end))
        return moe_err_set(err, "%s: tensor '%s': field 'data_offsets' is not an array of 2 non-negative integers", name,
                           t->name);
    if (t->end < t->begin)
        return moe_err_set(err, "%s: tensor '%s': field 'data_offsets' [%llu, %llu) ends before it begins", name, t->name,
                           (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end > data_len)
        return moe_err_set(err, "%s: tensor '%s': field 'data_offsets' [%llu, %llu) beyond the data section (%llu bytes)",
                           name, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                           (unsigned long long)data_len);
    uint64_t want = numel * (uint64_t)st_dtype_size(t->dtype);
    if (t->end - t->begin != want)
        return moe_err_set(err,
                           "%s: tensor '%s': field 'data_offsets' spans %llu bytes but dtype %s x shape needs %llu",
                           name, t->name, (unsigned long long)(t->end - t->begin), st_dtype_name(t->dtype),
                           (unsigned long long)want);
    return 0;
}

int st_parse(StFile *f, const uint8_t *buf, size_t len, const char *name, MoeErr *err) {
    memset(f, 0, sizeof(*f));
    snprintf(f->path, sizeof(f->path), "%s", name);
    if (len < 8) return moe_err_set(err, "%s: file too short for a safetensors header (%zu bytes)", name, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | buf[i];
    if (hlen > ST_MAX_HEADER)
        return moe_err_set(err, "%s: header length %llu exceeds the 100 MB limit", name, (unsigned long long)hlen);
    if (hlen > len - 8)
        return moe_err_set(err, "%s: header length %llu runs beyond the end of the file (%zu bytes)", name,
                           (unsigned long long)hlen, len);
    if (hlen < 2) return moe_err_set(err, "%s: header length %llu too small for a JSON object", name, (unsigned long long)hlen);
    const char *hdr = (const char *)buf + 8;
    cJSON *root = cJSON_ParseWithLength(hdr, (size_t)hlen);
    if (!root) return moe_err_set(err, "%s: header is not valid JSON", name);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return moe_err_set(err, "%s: header JSON is not an object", name);
    }
    f->data = buf + 8 + hlen;
    f->data_len = (uint64_t)(len - 8 - hlen);
    int n = 0;
    for (cJSON *e = root->child; e; e = e->next) n++;
    f->tensors = (StTensor *)calloc((size_t)(n ? n : 1), sizeof(StTensor));
    const StTensor **byoff = (const StTensor **)calloc((size_t)(n ? n : 1), sizeof(StTensor *));
    if (!f->tensors || !byoff) {
        free(byoff);
        cJSON_Delete(root);
        st_close(f);
        return moe_err_set(err, "%s: out of memory for %d tensor entries", name, n);
    }
    int rc = 0;
    for (cJSON *e = root->child; e; e = e->next) {
        if (!e->string) { rc = moe_err_set(err, "%s: header entry without a name", name); break; }
        if (strcmp(e->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(e)) { rc = moe_err_set(err, "%s: field '__metadata__' is not an object", name); break; }
            for (cJSON *m = e->child; m; m = m->next)
                if (!cJSON_IsString(m)) {
                    rc = moe_err_set(err, "%s: field '__metadata__'.'%s' is not a string", name, m->string ? m->string : "?");
                    break;
                }
            if (rc) break;
            continue;
        }
        StTensor *t = &f->tensors[f->n_tensors];
        t->name = strdup(e->string);
        if (!t->name) { rc = moe_err_set(err, "%s: out of memory", name); break; }
        f->n_tensors++;
        if ((rc = parse_entry(t, e, name, f->data_len, err)) != 0) break;
        t->data = f->data + t->begin;
    }
    cJSON_Delete(root);
    if (rc == 0) {
        qsort(f->tensors, (size_t)f->n_tensors, sizeof(StTensor), cmp_tensor_name);
        for (int i = 1; i < f->n_tensors; i++)
            if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
                rc = moe_err_set(err, "%s: tensor '%s' appears twice in the header", name, f->tensors[i].name);
                break;
            }
    }
    if (rc == 0) {
        // coverage: sorted by offset, each tensor starts where the previous ended, the last
        // ends at the end of the data section
        for (int i = 0; i < f->n_tensors; i++) byoff[i] = &f->tensors[i];
        qsort(byoff, (size_t)f->n_tensors, sizeof(*byoff), cmp_tensor_ptr_begin);
        uint64_t pos = 0;
        for (int i = 0; i < f->n_tensors && rc == 0; i++) {
            const StTensor *t = byoff[i];
            if (t->begin < pos)
                rc = moe_err_set(err, "%s: tensor '%s': field 'data_offsets' [%llu, %llu) overlaps the previous tensor '%s'",
                                 name, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                                 byoff[i - 1]->name);
            else if (t->begin > pos)
                rc = moe_err_set(err, "%s: tensor '%s': field 'data_offsets' leaves a hole of %llu bytes at %llu", name,
                                 t->name, (unsigned long long)(t->begin - pos), (unsigned long long)pos);
            pos = t->end;
        }
        if (rc == 0 && pos != f->data_len)
            rc = moe_err_set(err, "%s: tensors cover %llu of the %llu data bytes (trailing bytes not described)", name,
                             (unsigned long long)pos, (unsigned long long)f->data_len);
    }
    free(byoff);
    if (rc) {
        free_tensors(f->tensors, f->n_tensors);
        f->tensors = NULL;
        f->n_tensors = 0;
        return -1;
    }
    return 0;
}

int st_open(StFile *f, const char *path, MoeErr *err) {
    memset(f, 0, sizeof(*f));
    int fd = open(path, O_RDONLY);
    if (fd < 0) return moe_err_set(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return moe_err_set(err, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return moe_err_set(err, "%s: not a regular file", path);
    }
    size_t len = (size_t)st.st_size;
    if (len < 8) {
        close(fd);
        return moe_err_set(err, "%s: file too short for a safetensors header (%zu bytes)", path, len);
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return moe_err_set(err, "%s: cannot mmap: %s", path, strerror(errno));
    if (st_parse(f, (const uint8_t *)map, len, path, err) != 0) {
        munmap(map, len);
        memset(f, 0, sizeof(*f));
        return -1;
    }
    f->map = map;
    f->map_len = len;
    return 0;
}

void st_close(StFile *f) {
    free_tensors(f->tensors, f->n_tensors);
    if (f->map) munmap(f->map, f->map_len);
    memset(f, 0, sizeof(*f));
}

const StTensor *st_find(const StFile *f, const char *name) {
    int lo = 0, hi = f->n_tensors - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(name, f->tensors[mid].name);
        if (c == 0) return &f->tensors[mid];
        if (c < 0) hi = mid - 1; else lo = mid + 1;
    }
    return NULL;
}

void st_release(const StTensor *t) {
    if (!t || t->end <= t->begin) return;
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->data, b = a + (t->end - t->begin);
    uintptr_t a0 = (a + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);  // only whole pages of this tensor
    uintptr_t b0 = b & ~((uintptr_t)pg - 1);
    if (b0 > a0) madvise((void *)a0, b0 - a0, MADV_DONTNEED);
}

int st_read_f32(const StTensor *t, int64_t off, int64_t n, float *out, MoeErr *err) {
    if (off < 0 || n < 0 || off + n > t->numel)
        return moe_err_set(err, "tensor '%s': read of [%lld, %lld) outside %lld elements", t->name, (long long)off,
                           (long long)(off + n), (long long)t->numel);
    switch (t->dtype) {
    case ST_F32: memcpy(out, t->data + 4 * off, (size_t)n * 4); break;
    case ST_BF16: {
        const uint8_t *p = t->data + 2 * off;
        for (int64_t i = 0; i < n; i++) out[i] = bf16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        break;
    }
    case ST_F16: {
        const uint8_t *p = t->data + 2 * off;
        for (int64_t i = 0; i < n; i++) out[i] = f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        break;
    }
    default:
        return moe_err_set(err, "tensor '%s': dtype %s is not a floating-point type", t->name, st_dtype_name(t->dtype));
    }
    return 0;
}

// ---------------------------------------------------------------------------------------
// Models (single file or shards)

static int build_index(StModel *m, MoeErr *err) {
    int n = 0;
    for (int i = 0; i < m->n_files; i++) n += m->files[i].n_tensors;
    m->index = (const StTensor **)calloc((size_t)(n ? n : 1), sizeof(*m->index));
    if (!m->index) return moe_err_set(err, "%s: out of memory", m->dir);
    for (int i = 0; i < m->n_files; i++)
        for (int j = 0; j < m->files[i].n_tensors; j++) {
            m->files[i].tensors[j].file = i;
            m->index[m->n_tensors++] = &m->files[i].tensors[j];
        }
    qsort(m->index, (size_t)m->n_tensors, sizeof(*m->index), cmp_tensor_ptr_name);
    for (int i = 1; i < m->n_tensors; i++)
        if (strcmp(m->index[i - 1]->name, m->index[i]->name) == 0)
            return moe_err_set(err, "%s: tensor '%s' appears in two shards (%s and %s)", m->dir, m->index[i]->name,
                               m->files[m->index[i - 1]->file].path, m->files[m->index[i]->file].path);
    return 0;
}

static int open_index(StModel *m, const char *ipath, MoeErr *err) {
    char *text = NULL;
    size_t n = 0;
    if (read_file_all(ipath, &text, &n, err) != 0) return -1;
    cJSON *root = cJSON_ParseWithLength(text, n);
    free(text);
    if (!root) return moe_err_set(err, "%s: not valid JSON", ipath);
    int rc = 0;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return moe_err_set(err, "%s: missing or non-object field 'weight_map'", ipath);
    }
    int cap = 0;
    for (const cJSON *e = wm->child; e; e = e->next) cap++;
    char **names = (char **)calloc((size_t)(cap ? cap : 1), sizeof(char *));
    m->files = (StFile *)calloc((size_t)(cap ? cap : 1), sizeof(StFile));
    if (!names || !m->files) {
        free(names);
        cJSON_Delete(root);
        return moe_err_set(err, "%s: out of memory", ipath);
    }
    int nf = 0;
    for (const cJSON *e = wm->child; e && rc == 0; e = e->next) {
        if (!cJSON_IsString(e)) { rc = moe_err_set(err, "%s: field 'weight_map'.'%s' is not a string", ipath, e->string); break; }
        const char *fn = e->valuestring;
        if (!fn[0] || strchr(fn, '/') || strcmp(fn, "..") == 0 || strcmp(fn, ".") == 0) {
            rc = moe_err_set(err, "%s: field 'weight_map'.'%s': bad shard file name '%.64s'", ipath, e->string, fn);
            break;
        }
        int k = 0;
        while (k < nf && strcmp(names[k], fn) != 0) k++;
        if (k == nf) {
            names[nf] = strdup(fn);
            char p[2048];
            snprintf(p, sizeof(p), "%s/%s", m->dir, fn);
            if (st_open(&m->files[nf], p, err) != 0) { free(names[nf]); rc = -1; break; }
            nf++;
            m->n_files = nf;
        }
        if (!st_find(&m->files[k], e->string))
            rc = moe_err_set(err, "%s: tensor '%s' listed in 'weight_map' is missing from %s", ipath, e->string,
                             m->files[k].path);
    }
    for (int k = 0; k < nf; k++) free(names[k]);
    free(names);
    cJSON_Delete(root);
    if (rc == 0 && nf == 0) rc = moe_err_set(err, "%s: field 'weight_map' is empty", ipath);
    return rc;
}

int st_model_open(StModel *m, const char *dir, MoeErr *err) {
    memset(m, 0, sizeof(*m));
    snprintf(m->dir, sizeof(m->dir), "%s", dir);
    char p[2048];
    snprintf(p, sizeof(p), "%s/model.safetensors.index.json", dir);
    int rc;
    if (file_exists(p)) {
        rc = open_index(m, p, err);
    } else {
        snprintf(p, sizeof(p), "%s/model.safetensors", dir);
        if (!file_exists(p)) return moe_err_set(err, "%s: neither model.safetensors nor model.safetensors.index.json found", dir);
        m->files = (StFile *)calloc(1, sizeof(StFile));
        if (!m->files) return moe_err_set(err, "out of memory");
        rc = st_open(&m->files[0], p, err);
        if (rc == 0) m->n_files = 1;
    }
    if (rc == 0) rc = build_index(m, err);
    if (rc) st_model_close(m);
    return rc;
}

void st_model_close(StModel *m) {
    for (int i = 0; i < m->n_files; i++) st_close(&m->files[i]);
    free(m->files);
    free(m->index);
    memset(m, 0, sizeof(*m));
}

const StTensor *st_model_find(const StModel *m, const char *name) {
    int lo = 0, hi = m->n_tensors - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(name, m->index[mid]->name);
        if (c == 0) return m->index[mid];
        if (c < 0) hi = mid - 1; else lo = mid + 1;
    }
    return NULL;
}

const char *st_model_file_of(const StModel *m, const StTensor *t) {
    return t && t->file >= 0 && t->file < m->n_files ? m->files[t->file].path : m->dir;
}

const StTensor *st_model_get(const StModel *m, const char *name, int ndim, const int64_t *shape, MoeErr *err) {
    const StTensor *t = st_model_find(m, name);
    if (!t) {
        moe_err_set(err, "%s: missing tensor '%s'", m->dir, name);
        return NULL;
    }
    if (ndim >= 0 && shape) {
        int ok = t->ndim == ndim;
        for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
        if (!ok) {
            char want[160] = "", got[160] = "";
            for (int i = 0; i < ndim; i++)
                snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%lld", i ? ", " : "", (long long)shape[i]);
            for (int i = 0; i < t->ndim; i++)
                snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
            moe_err_set(err, "%s: tensor '%s': field 'shape' is [%s], expected [%s]", st_model_file_of(m, t), name, got,
                        want);
            return NULL;
        }
    }
    return t;
}

// ---------------------------------------------------------------------------------------
// Writer

void st_writer_init(StWriter *w) { memset(w, 0, sizeof(*w)); }

int st_writer_add(StWriter *w, const char *name, int dtype, int ndim, const int64_t *shape, const void *data,
                  MoeErr *err) {
    if (dtype < 0 || dtype >= ST_N_DTYPES) return moe_err_set(err, "tensor '%s': bad dtype %d", name, dtype);
    if (ndim < 0 || ndim > ST_MAX_DIMS) return moe_err_set(err, "tensor '%s': bad ndim %d", name, ndim);
    if (strcmp(name, "__metadata__") == 0) return moe_err_set(err, "tensor name '__metadata__' is reserved");
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0) return moe_err_set(err, "tensor '%s' added twice", name);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 64;
        StTensor *t = (StTensor *)realloc(w->t, (size_t)cap * sizeof(StTensor));
        if (!t) return moe_err_set(err, "out of memory");
        w->t = t;
        w->cap = cap;
    }
    StTensor *t = &w->t[w->n];
    memset(t, 0, sizeof(*t));
    t->dtype = dtype;
    t->ndim = ndim;
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return moe_err_set(err, "tensor '%s': negative shape", name);
        t->shape[i] = shape[i];
        numel *= shape[i];
    }
    t->numel = numel;
    size_t bytes = (size_t)numel * (size_t)st_dtype_size(dtype);
    uint8_t *copy = (uint8_t *)malloc(bytes ? bytes : 1);
    t->name = strdup(name);
    if (!copy || !t->name) {
        free(copy);
        free(t->name);
        return moe_err_set(err, "out of memory for tensor '%s'", name);
    }
    if (bytes) memcpy(copy, data, bytes);
    t->data = copy;
    t->end = bytes;
    w->n++;
    return 0;
}

int st_writer_add_f32(StWriter *w, const char *name, int dtype, int ndim, const int64_t *shape, const float *data,
                      MoeErr *err) {
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i];
    if (dtype == ST_F32) return st_writer_add(w, name, dtype, ndim, shape, data, err);
    if (dtype != ST_BF16 && dtype != ST_F16) return moe_err_set(err, "tensor '%s': fp32 data cannot be stored as %s", name, st_dtype_name(dtype));
    uint16_t *h = (uint16_t *)malloc((size_t)(numel ? numel : 1) * 2);
    if (!h) return moe_err_set(err, "out of memory");
    for (int64_t i = 0; i < numel; i++) h[i] = dtype == ST_BF16 ? f32_to_bf16(data[i]) : f32_to_f16(data[i]);
    int rc = st_writer_add(w, name, dtype, ndim, shape, h, err);
    free(h);
    return rc;
}

int st_writer_write(StWriter *w, const char *path, MoeErr *err) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return moe_err_set(err, "out of memory");
    if (w->metadata_json) {
        cJSON *md = cJSON_Parse(w->metadata_json);
        if (!cJSON_IsObject(md)) {
            cJSON_Delete(md);
            cJSON_Delete(root);
            return moe_err_set(err, "%s: __metadata__ is not a JSON object", path);
        }
        cJSON_AddItemToObject(root, "__metadata__", md);
    }
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        StTensor *t = &w->t[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "dtype", st_dtype_name(t->dtype));
        cJSON *sh = cJSON_AddArrayToObject(e, "shape");
        for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
        cJSON *of = cJSON_AddArrayToObject(e, "data_offsets");
        uint64_t bytes = t->end;
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + bytes)));
        off += bytes;
        cJSON_AddItemToObject(root, t->name, e);
    }
    char *js = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!js) return moe_err_set(err, "out of memory");
    size_t jl = strlen(js);
    size_t hl = (jl + 7) & ~(size_t)7;  // pad with spaces to 8 bytes so the data is aligned
    size_t total = 8 + hl + (size_t)off;
    uint8_t *buf = (uint8_t *)malloc(total);
    if (!buf) {
        free(js);
        return moe_err_set(err, "out of memory for %zu bytes", total);
    }
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, js, jl);
    memset(buf + 8 + jl, ' ', hl - jl);
    free(js);
    uint8_t *p = buf + 8 + hl;
    for (int i = 0; i < w->n; i++) {
        if (w->t[i].end) memcpy(p, w->t[i].data, (size_t)w->t[i].end);
        p += w->t[i].end;
    }
    int rc = write_file_atomic(path, buf, total, err);
    free(buf);
    return rc;
}

void st_writer_free(StWriter *w) {
    for (int i = 0; i < w->n; i++) {
        free(w->t[i].name);
        free((void *)w->t[i].data);
    }
    free(w->t);
    free(w->metadata_json);
    memset(w, 0, sizeof(*w));
}
