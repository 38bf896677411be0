// NF4 quantization and the NF4 x fp32 matmul kernels. See nf4.h.
#include "nf4.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <omp.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../common/gemm.h"

const float nf4_code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

int nf4_gemm_threshold = 16;  // bench_nf4: the tiled path wins from ~12-16 tokens

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y ? 1 : 0;
}

// torch.linspace(start, end, steps) in float32 as its CPU kernel computes it: the first half
// from start, the second half from end, each value one fused multiply-add.
static void linspace_f32(float start, float end, int steps, float *out) {
    float step = (end - start) / (float)(steps - 1);
    int half = steps / 2;
    for (int i = 0; i < steps; i++)
        out[i] = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(steps - i - 1), end);
}

void nf4_dynamic_map(float map[256]) {
    const int max_exp = 7, non_sign_bits = 7;
    int n = 0;
    float bounds[130], means;
    for (int i = 0; i < max_exp; i++) {
        int items = (1 << (i + non_sign_bits - max_exp)) + 1;
        linspace_f32(0.1f, 1.0f, items, bounds);
        float scale = (float)pow(10.0, (double)(-(max_exp - 1) + i));
        for (int k = 0; k + 1 < items; k++) {
            means = (bounds[k] + bounds[k + 1]) / 2.0f;
            map[n++] = scale * means;
            map[n++] = -scale * means;
        }
    }
    map[n++] = 0.0f;
    map[n++] = 1.0f;
    while (n < 256) map[n++] = 0.0f;
    qsort(map, 256, sizeof(float), cmp_float);
}

int nf4_nearest(const float *code, int n, float v) {
    // number of midpoints strictly below v (torch.bucketize(v, midpoints), right=False)
    int lo = 0, hi = n - 1;  // answer in [0, n-1]
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        float m = (code[mid] + code[mid + 1]) / 2.0f;
        if (v > m) lo = mid + 1; else hi = mid;
    }
    return lo;
}


void nf4_free(Nf4Tensor *t) {
    if (t->owned) {
        free(t->q);
        free(t->absmax);
        free(t->qabsmax);
        free(t->nested_absmax);
    }
    memset(t, 0, sizeof(*t));
}

// quantize (absmax - offset) blockwise with the dynamic map: bitsandbytes quantize_blockwise
static void quantize_nested(Nf4Tensor *t, const float *absmax) {
    double s = 0;
    for (int64_t b = 0; b < t->n_blocks; b++) s += absmax[b];
    t->nested_offset = (float)(s / (double)t->n_blocks);
    for (int64_t g = 0; g < t->n_nested; g++) {
        int64_t b0 = g * t->nested_blocksize, b1 = b0 + t->nested_blocksize;
        if (b1 > t->n_blocks) b1 = t->n_blocks;
        float am = 0;
        for (int64_t b = b0; b < b1; b++) {
            float a = fabsf(absmax[b] - t->nested_offset);
            am = a > am ? a : am;
        }
        t->nested_absmax[g] = am;
        float amc = am < 1e-38f ? 1e-38f : am;
        int full = (b1 - b0) == t->nested_blocksize;
        float inv = 1.0f / amc;
        for (int64_t b = b0; b < b1; b++) {
            float v = full ? (absmax[b] - t->nested_offset) * inv : (absmax[b] - t->nested_offset) / amc;
            v = v < -1 ? -1 : v > 1 ? 1 : v;
            t->qabsmax[b] = (uint8_t)nf4_nearest(t->nested_code, 256, v);
        }
    }
}

int nf4_quantize_raw(Nf4Tensor *t, const void *src, int src_dtype, int64_t rows, int64_t cols, int blocksize,
                     int double_quant, MoeErr *err) {
    memset(t, 0, sizeof(*t));
    if (rows < 0 || cols < 0 || blocksize < 2 || (blocksize & 1))
        return moe_err_set(err, "nf4: bad shape (%lld, %lld) or blocksize %d", (long long)rows, (long long)cols, blocksize);
    if (src_dtype != ST_F32 && src_dtype != ST_BF16 && src_dtype != ST_F16)
        return moe_err_set(err, "nf4: cannot quantize dtype %s", st_dtype_name(src_dtype));
    t->rows = rows;
    t->cols = cols;
    t->n = rows * cols;
    t->blocksize = blocksize;
    t->n_blocks = (t->n + blocksize - 1) / blocksize;
    t->owned = 1;
    memcpy(t->code, nf4_code, sizeof(nf4_code));
    t->q = (uint8_t *)calloc((size_t)((t->n + 1) / 2 + 1), 1);
    float *absmax = (float *)malloc((size_t)(t->n_blocks + 1) * sizeof(float));
    if (!t->q || !absmax) {
        free(absmax);
        nf4_free(t);
        return moe_err_set(err, "nf4: out of memory for %lld values", (long long)t->n);
    }
    float mid[15];
    for (int k = 0; k < 15; k++) mid[k] = (nf4_code[k] + nf4_code[k + 1]) / 2.0f;
    const uint8_t *p = (const uint8_t *)src;
    const int64_t full_blocks = t->n / blocksize;
#pragma omp parallel if(t->n > 65536)
    {
        float *v = (float *)malloc((size_t)blocksize * sizeof(float));
        uint8_t *qb = (uint8_t *)malloc((size_t)blocksize);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < t->n_blocks; b++) {
            if (!v || !qb) continue;
            int64_t i0 = b * blocksize, i1 = i0 + blocksize;
            if (i1 > t->n) i1 = t->n;
            int m = (int)(i1 - i0);
            // the block as fp32 (one pass over the source), its absmax
            if (src_dtype == ST_F32) memcpy(v, p + 4 * i0, (size_t)m * 4);
            else if (src_dtype == ST_BF16)
                for (int j = 0; j < m; j++) v[j] = bf16_to_f32((uint16_t)(p[2 * (i0 + j)] | (p[2 * (i0 + j) + 1] << 8)));
            else
                for (int j = 0; j < m; j++) v[j] = f16_to_f32((uint16_t)(p[2 * (i0 + j)] | (p[2 * (i0 + j) + 1] << 8)));
            float am = 0;
            for (int j = 0; j < m; j++) {  // (a > am ? a : am vectorizes; fmaxf is a libm call here)
                float a = fabsf(v[j]);
                am = a > am ? a : am;
            }
            absmax[b] = am;
            float amc = am < 1e-38f ? 1e-38f : am;
            float inv = 1.0f / amc;
            if (b < full_blocks)  // as bitsandbytes' default backend: x * (1/absmax), x / absmax for the tail
                for (int j = 0; j < m; j++) v[j] *= inv;
            else
                for (int j = 0; j < m; j++) v[j] /= amc;
            for (int j = 0; j < m; j++) {
                float x = v[j] < -1 ? -1 : v[j] > 1 ? 1 : v[j];
                v[j] = isnan(x) ? 0.0f : x;
                qb[j] = 0;
            }
            // code = number of midpoints below the value (vectorizes over the block)
            for (int k = 0; k < 15; k++)
                for (int j = 0; j < m; j++) qb[j] += v[j] > mid[k];
            // blocksize is even, so a byte never straddles two blocks (no race)
            for (int j = 0; j < m; j++) {
                int64_t i = i0 + j;
                if (i & 1) t->q[i >> 1] |= qb[j];
                else t->q[i >> 1] |= (uint8_t)(qb[j] << 4);
            }
        }
        free(v);
        free(qb);
    }
    if (t->n & 1) t->q[t->n >> 1] |= 7;  // the padding code, as bitsandbytes pads with 0.0 (code 7)
    if (!double_quant) {
        t->absmax = absmax;
        return 0;
    }
    t->nested = 1;
    t->nested_blocksize = NF4_NESTED_BLOCK;
    t->n_nested = (t->n_blocks + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK;
    nf4_dynamic_map(t->nested_code);
    t->qabsmax = (uint8_t *)malloc((size_t)(t->n_blocks + 1));
    t->nested_absmax = (float *)malloc((size_t)(t->n_nested + 1) * sizeof(float));
    if (!t->qabsmax || !t->nested_absmax) {
        free(absmax);
        nf4_free(t);
        return moe_err_set(err, "nf4: out of memory");
    }
    quantize_nested(t, absmax);
    free(absmax);
    return 0;
}

void nf4_dequantize_range(const Nf4Tensor *t, int64_t i0, int64_t count, float *out) {
    int64_t i = i0, end = i0 + count;
    while (i < end) {
        int64_t b = i / t->blocksize;
        int64_t be = (b + 1) * t->blocksize;
        if (be > end) be = end;
        float am = nf4_absmax(t, b);
        for (; i < be; i++) out[i - i0] = t->code[nf4_get_code(t, i)] * am;
    }
}

int64_t nf4_bytes(const Nf4Tensor *t) {
    int64_t b = (t->n + 1) / 2 + 16 * 4;
    if (t->nested) b += t->n_blocks + t->n_nested * 4 + 256 * 4 + 4;
    else b += t->n_blocks * 4;
    return b;
}

int64_t nf4_planned_bytes(int64_t n, int blocksize, int double_quant) {
    int64_t nb = (n + blocksize - 1) / blocksize;
    int64_t b = (n + 1) / 2 + 16 * 4;
    if (double_quant) b += nb + ((nb + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK) * 4 + 256 * 4 + 4;
    else b += nb * 4;
    return b;
}

// ---------------------------------------------------------------------------------------
// bitsandbytes saved form

int nf4_is_bnb(const StModel *m, const char *prefix) {
    char name[600];
    snprintf(name, sizeof(name), "%s.weight.quant_state.bitsandbytes__nf4", prefix);
    if (st_model_find(m, name)) return 1;
    snprintf(name, sizeof(name), "%s.weight.quant_state.bitsandbytes__fp4", prefix);
    return st_model_find(m, name) ? 2 : 0;
}

static const StTensor *get_typed(const StModel *m, const char *prefix, const char *suffix, int dtype, int64_t numel,
                                 MoeErr *err) {
    char name[600];
    snprintf(name, sizeof(name), "%s.%s", prefix, suffix);
    const StTensor *t = st_model_get(m, name, -1, NULL, err);
    if (!t) return NULL;
    if (t->dtype != dtype) {
        moe_err_set(err, "%s: tensor '%s': field 'dtype' is %s, expected %s", st_model_file_of(m, t), name,
                    st_dtype_name(t->dtype), st_dtype_name(dtype));
        return NULL;
    }
    if (numel >= 0 && t->numel != numel) {
        moe_err_set(err, "%s: tensor '%s': field 'shape' holds %lld elements, expected %lld", st_model_file_of(m, t),
                    name, (long long)t->numel, (long long)numel);
        return NULL;
    }
    return t;
}

int nf4_from_bnb(Nf4Tensor *t, const StModel *m, const char *prefix, int64_t rows, int64_t cols, MoeErr *err) {
    memset(t, 0, sizeof(*t));
    char qsname[600];
    snprintf(qsname, sizeof(qsname), "%s.weight.quant_state.bitsandbytes__nf4", prefix);
    const StTensor *qs = st_model_find(m, qsname);
    if (!qs) {
        if (nf4_is_bnb(m, prefix) == 2)
            return moe_err_set(err, "%s: tensor '%s.weight': quant_type fp4 is not supported (only nf4)", m->dir, prefix);
        return moe_err_set(err, "%s: missing tensor '%s'", m->dir, qsname);
    }
    const char *file = st_model_file_of(m, qs);
    if (qs->dtype != ST_U8)
        return moe_err_set(err, "%s: tensor '%s': field 'dtype' is %s, expected U8", file, qsname, st_dtype_name(qs->dtype));
    cJSON *js = cJSON_ParseWithLength((const char *)qs->data, (size_t)qs->numel);
    if (!cJSON_IsObject(js)) {
        cJSON_Delete(js);
        return moe_err_set(err, "%s: tensor '%s' is not a JSON object", file, qsname);
    }
    int rc = 0;
    const cJSON *qt = cJSON_GetObjectItemCaseSensitive(js, "quant_type");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(js, "blocksize");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(js, "shape");
    const cJSON *nb = cJSON_GetObjectItemCaseSensitive(js, "nested_blocksize");
    const cJSON *no = cJSON_GetObjectItemCaseSensitive(js, "nested_offset");
    if (!cJSON_IsString(qt) || strcmp(qt->valuestring, "nf4") != 0)
        rc = moe_err_set(err, "%s: tensor '%s': field 'quant_type' must be \"nf4\"", file, qsname);
    else if (!cJSON_IsNumber(bs) || bs->valueint < 2 || bs->valueint > (1 << 20) || (bs->valueint & 1))
        rc = moe_err_set(err, "%s: tensor '%s': field 'blocksize' missing or invalid", file, qsname);
    else if (!cJSON_IsArray(sh) || cJSON_GetArraySize(sh) != 2 || !cJSON_IsNumber(cJSON_GetArrayItem(sh, 0)) ||
             !cJSON_IsNumber(cJSON_GetArrayItem(sh, 1)) || cJSON_GetArrayItem(sh, 0)->valuedouble != (double)rows ||
             cJSON_GetArrayItem(sh, 1)->valuedouble != (double)cols)
        rc = moe_err_set(err, "%s: tensor '%s': field 'shape' is not [%lld, %lld]", file, qsname, (long long)rows,
                         (long long)cols);
    else if ((nb || no) && (!cJSON_IsNumber(nb) || !cJSON_IsNumber(no) || nb->valueint < 1 || nb->valueint > (1 << 20)))
        rc = moe_err_set(err, "%s: tensor '%s': fields 'nested_blocksize' / 'nested_offset' invalid", file, qsname);
    if (rc) {
        cJSON_Delete(js);
        return rc;
    }
    t->rows = rows;
    t->cols = cols;
    t->n = rows * cols;
    t->blocksize = bs->valueint;
    t->n_blocks = (t->n + t->blocksize - 1) / t->blocksize;
    t->nested = nb != NULL;
    if (t->nested) {
        t->nested_blocksize = nb->valueint;
        t->nested_offset = (float)no->valuedouble;
        t->n_nested = (t->n_blocks + t->nested_blocksize - 1) / t->nested_blocksize;
    }
    cJSON_Delete(js);
    char wname[600];
    snprintf(wname, sizeof(wname), "%s.weight", prefix);
    const StTensor *w = get_typed(m, prefix, "weight", ST_U8, (t->n + 1) / 2, err);
    const StTensor *qm = w ? get_typed(m, prefix, "weight.quant_map", ST_F32, 16, err) : NULL;
    if (!qm) return -1;
    // copy into owned memory (alignment of the mapped data is not guaranteed; the caller
    // releases the mapped pages afterwards)
    t->owned = 1;
    memcpy(t->code, qm->data, sizeof(t->code));
    t->q = (uint8_t *)malloc((size_t)w->numel + 1);
    if (!t->q) return moe_err_set(err, "out of memory for '%s'", wname);
    memcpy(t->q, w->data, (size_t)w->numel);
    if (!t->nested) {
        const StTensor *am = get_typed(m, prefix, "weight.absmax", ST_F32, t->n_blocks, err);
        if (!am) { nf4_free(t); return -1; }
        t->absmax = (float *)malloc((size_t)(t->n_blocks + 1) * sizeof(float));
        if (!t->absmax) { nf4_free(t); return moe_err_set(err, "out of memory for '%s'", wname); }
        memcpy(t->absmax, am->data, (size_t)t->n_blocks * sizeof(float));
        st_release(am);
    } else {
        const StTensor *am = get_typed(m, prefix, "weight.absmax", ST_U8, t->n_blocks, err);
        const StTensor *na = am ? get_typed(m, prefix, "weight.nested_absmax", ST_F32, t->n_nested, err) : NULL;
        const StTensor *nq = na ? get_typed(m, prefix, "weight.nested_quant_map", ST_F32, 256, err) : NULL;
        if (!nq) { nf4_free(t); return -1; }
        t->qabsmax = (uint8_t *)malloc((size_t)t->n_blocks + 1);
        t->nested_absmax = (float *)malloc((size_t)(t->n_nested + 1) * sizeof(float));
        if (!t->qabsmax || !t->nested_absmax) { nf4_free(t); return moe_err_set(err, "out of memory for '%s'", wname); }
        memcpy(t->qabsmax, am->data, (size_t)t->n_blocks);
        memcpy(t->nested_absmax, na->data, (size_t)t->n_nested * sizeof(float));
        memcpy(t->nested_code, nq->data, sizeof(t->nested_code));
        st_release(am);
    }
    st_release(w);
    return 0;
}

int nf4_write_bnb(const Nf4Tensor *t, StWriter *w, const char *prefix, const char *dtype_name, MoeErr *err) {
    char name[600];
    int64_t shp[2] = {(t->n + 1) / 2, 1};
    snprintf(name, sizeof(name), "%s.weight", prefix);
    if (st_writer_add(w, name, ST_U8, 2, shp, t->q, err)) return -1;
    int64_t s16[1] = {16};
    snprintf(name, sizeof(name), "%s.weight.quant_map", prefix);
    if (st_writer_add(w, name, ST_F32, 1, s16, t->code, err)) return -1;
    int64_t snb[1] = {t->n_blocks};
    snprintf(name, sizeof(name), "%s.weight.absmax", prefix);
    if (t->nested) {
        if (st_writer_add(w, name, ST_U8, 1, snb, t->qabsmax, err)) return -1;
        int64_t snn[1] = {t->n_nested}, s256[1] = {256};
        snprintf(name, sizeof(name), "%s.weight.nested_absmax", prefix);
        if (st_writer_add(w, name, ST_F32, 1, snn, t->nested_absmax, err)) return -1;
        snprintf(name, sizeof(name), "%s.weight.nested_quant_map", prefix);
        if (st_writer_add(w, name, ST_F32, 1, s256, t->nested_code, err)) return -1;
    } else if (st_writer_add(w, name, ST_F32, 1, snb, t->absmax, err)) {
        return -1;
    }
    char js[512];
    if (t->nested)
        snprintf(js, sizeof(js),
                 "{\"quant_type\": \"nf4\", \"blocksize\": %d, \"dtype\": \"%s\", \"shape\": [%lld, %lld], "
                 "\"nested_blocksize\": %d, \"nested_dtype\": \"float32\", \"nested_offset\": %.9g}",
                 t->blocksize, dtype_name, (long long)t->rows, (long long)t->cols, t->nested_blocksize,
                 (double)t->nested_offset);
    else
        snprintf(js, sizeof(js), "{\"quant_type\": \"nf4\", \"blocksize\": %d, \"dtype\": \"%s\", \"shape\": [%lld, %lld]}",
                 t->blocksize, dtype_name, (long long)t->rows, (long long)t->cols);
    int64_t sj[1] = {(int64_t)strlen(js)};
    snprintf(name, sizeof(name), "%s.weight.quant_state.bitsandbytes__nf4", prefix);
    return st_writer_add(w, name, ST_U8, 1, sj, js, err);
}

// ---------------------------------------------------------------------------------------
// Kernels

// Fast layout: rows made of whole blocks and blocks of a multiple of 32 values.
static int fast_layout(const Nf4Tensor *W) {
    return W->cols % W->blocksize == 0 && W->blocksize % 32 == 0;
}

// Dequantize rows [r0, r0 + nr) into out (nr, cols).
static void dequant_rows(const Nf4Tensor *W, int64_t r0, int64_t nr, float *out) {
    if (!fast_layout(W)) {
        nf4_dequantize_range(W, r0 * W->cols, nr * W->cols, out);
        return;
    }
    const int64_t cols = W->cols, bs = W->blocksize;
    for (int64_t r = 0; r < nr; r++) {
        const uint8_t *q = W->q + (r0 + r) * cols / 2;
        float *o = out + r * cols;
        int64_t b0 = (r0 + r) * cols / bs;
        for (int64_t c = 0; c < cols; c += bs) {
            float am = nf4_absmax(W, b0 + c / bs);
#if defined(__AVX2__) && defined(__FMA__)
            // 8 bytes -> 16 values: two 8-entry permutes + blend per nibble, then interleave
            const __m256 cb_lo = _mm256_mul_ps(_mm256_loadu_ps(W->code), _mm256_set1_ps(am));
            const __m256 cb_hi = _mm256_mul_ps(_mm256_loadu_ps(W->code + 8), _mm256_set1_ps(am));
            const __m256i m15 = _mm256_set1_epi32(15), m7 = _mm256_set1_epi32(7);
            for (int64_t j = 0; j < bs / 2; j += 8) {
                __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + c / 2 + j)));
                __m256i ih = _mm256_srli_epi32(v, 4), il = _mm256_and_si256(v, m15);
                __m256 whi = _mm256_blendv_ps(_mm256_permutevar8x32_ps(cb_lo, ih), _mm256_permutevar8x32_ps(cb_hi, ih),
                                              _mm256_castsi256_ps(_mm256_cmpgt_epi32(ih, m7)));
                __m256 wlo = _mm256_blendv_ps(_mm256_permutevar8x32_ps(cb_lo, il), _mm256_permutevar8x32_ps(cb_hi, il),
                                              _mm256_castsi256_ps(_mm256_cmpgt_epi32(il, m7)));
                __m256 a = _mm256_unpacklo_ps(whi, wlo), b = _mm256_unpackhi_ps(whi, wlo);
                _mm256_storeu_ps(o + c + 2 * j, _mm256_permute2f128_ps(a, b, 0x20));
                _mm256_storeu_ps(o + c + 2 * j + 8, _mm256_permute2f128_ps(a, b, 0x31));
            }
#else
            float lut[16];
            for (int k = 0; k < 16; k++) lut[k] = W->code[k] * am;
            for (int64_t j = 0; j < bs / 2; j++) {
                uint8_t byte = q[c / 2 + j];
                o[c + 2 * j] = lut[byte >> 4];
                o[c + 2 * j + 1] = lut[byte & 15];
            }
#endif
        }
    }
}

void nf4_matmul_tiled(const Nf4Tensor *W, const float *x, int64_t n_tok, float *y, const float *bias) {
    const int64_t rows = W->rows, cols = W->cols;
    if (rows == 0 || n_tok == 0) return;
    int64_t tile = (int64_t)((1 << 20) / (cols > 0 ? cols : 1));  // ~4 MB of fp32 per tile
    if (tile < 16) tile = 16;
    tile = (tile + 15) / 16 * 16;
    if (tile > rows) tile = rows;
    float *buf = (float *)malloc((size_t)(tile * cols + 1) * sizeof(float));
    if (!buf) {  // no memory for a tile: the fused kernel needs none
        nf4_matmul_fused(W, x, n_tok, y, bias);
        return;
    }
    for (int64_t r0 = 0; r0 < rows; r0 += tile) {
        int64_t nr = rows - r0 < tile ? rows - r0 : tile;
        int64_t chunk = 16;
#pragma omp parallel for schedule(static) if(nr * cols > 65536)
        for (int64_t r = 0; r < nr; r += chunk) dequant_rows(W, r0 + r, (nr - r < chunk ? nr - r : chunk), buf + r * cols);
        // y[:, r0:r0+nr] (n_tok, nr) = x (n_tok, cols) buf^T
        gemm(0, 1, (int)n_tok, (int)nr, (int)cols, 1.0f, x, (int)cols, buf, (int)cols, 0.0f, y + r0, (int)rows);
    }
    free(buf);
    if (bias)
        for (int64_t i = 0; i < n_tok; i++)
            for (int64_t r = 0; r < rows; r++) y[i * rows + r] += bias[r];
}

#define NF4_NT 4  // tokens per pass of the fused kernel

// x' = x with each group of 32 values de-interleaved: [x0 x2 .. x30 x1 x3 .. x31], so that
// the high nibbles (even elements) and low nibbles (odd elements) of 16 bytes line up.
static void shuffle_x(const float *x, int64_t n_tok, int64_t cols, float *xs) {
    for (int64_t i = 0; i < n_tok; i++)
        for (int64_t c = 0; c < cols; c += 32)
            for (int j = 0; j < 16; j++) {
                xs[i * cols + c + j] = x[i * cols + c + 2 * j];
                xs[i * cols + c + 16 + j] = x[i * cols + c + 2 * j + 1];
            }
}

// one row of W against nt (<= NF4_NT) shuffled token vectors
static void fused_row(const Nf4Tensor *W, int64_t r, const float *xs, int nt, int64_t cols, float *acc) {
    const int64_t bs = W->blocksize;
    const uint8_t *q = W->q + r * cols / 2;
    const int64_t b0 = r * cols / bs;
#if defined(__AVX512F__)
    const __m512 cb = _mm512_loadu_ps(W->code);
    const __m512i m15 = _mm512_set1_epi32(15);
    __m512 a[NF4_NT];
    for (int i = 0; i < NF4_NT; i++) a[i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c += bs) {
        __m512 s[NF4_NT];
        for (int i = 0; i < NF4_NT; i++) s[i] = _mm512_setzero_ps();
        for (int64_t k = 0; k < bs; k += 32) {
            __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + (c + k) / 2)));
            __m512 whi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), cb);
            __m512 wlo = _mm512_permutexvar_ps(_mm512_and_si512(v, m15), cb);
            for (int i = 0; i < nt; i++) {
                const float *xi = xs + (int64_t)i * cols + c + k;
                s[i] = _mm512_fmadd_ps(whi, _mm512_loadu_ps(xi), s[i]);
                s[i] = _mm512_fmadd_ps(wlo, _mm512_loadu_ps(xi + 16), s[i]);
            }
        }
        __m512 am = _mm512_set1_ps(nf4_absmax(W, b0 + c / bs));
        for (int i = 0; i < nt; i++) a[i] = _mm512_fmadd_ps(s[i], am, a[i]);
    }
    for (int i = 0; i < nt; i++) acc[i] = _mm512_reduce_add_ps(a[i]);
#elif defined(__AVX2__) && defined(__FMA__)
    // 16-entry lookup = two 8-entry permutes and a blend on bit 3 of the code
    const __m256 cb_lo = _mm256_loadu_ps(W->code), cb_hi = _mm256_loadu_ps(W->code + 8);
    const __m256i m15 = _mm256_set1_epi32(15), m7 = _mm256_set1_epi32(7);
    __m256 a[NF4_NT];
    for (int i = 0; i < NF4_NT; i++) a[i] = _mm256_setzero_ps();
    for (int64_t c = 0; c < cols; c += bs) {
        __m256 s[NF4_NT];
        for (int i = 0; i < NF4_NT; i++) s[i] = _mm256_setzero_ps();
        for (int64_t k = 0; k < bs; k += 32) {
            for (int h = 0; h < 2; h++) {  // bytes h*8 .. h*8+7 of this group of 16
                __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + (c + k) / 2 + 8 * h)));
                __m256i ih = _mm256_srli_epi32(v, 4), il = _mm256_and_si256(v, m15);
                __m256 whi = _mm256_blendv_ps(_mm256_permutevar8x32_ps(cb_lo, ih), _mm256_permutevar8x32_ps(cb_hi, ih),
                                              _mm256_castsi256_ps(_mm256_cmpgt_epi32(ih, m7)));
                __m256 wlo = _mm256_blendv_ps(_mm256_permutevar8x32_ps(cb_lo, il), _mm256_permutevar8x32_ps(cb_hi, il),
                                              _mm256_castsi256_ps(_mm256_cmpgt_epi32(il, m7)));
                for (int i = 0; i < nt; i++) {
                    const float *xi = xs + (int64_t)i * cols + c + k + 8 * h;
                    s[i] = _mm256_fmadd_ps(whi, _mm256_loadu_ps(xi), s[i]);
                    s[i] = _mm256_fmadd_ps(wlo, _mm256_loadu_ps(xi + 16), s[i]);
                }
            }
        }
        __m256 am = _mm256_set1_ps(nf4_absmax(W, b0 + c / bs));
        for (int i = 0; i < nt; i++) a[i] = _mm256_fmadd_ps(s[i], am, a[i]);
    }
    for (int i = 0; i < nt; i++) {
        __m128 r = _mm_add_ps(_mm256_castps256_ps128(a[i]), _mm256_extractf128_ps(a[i], 1));
        r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        r = _mm_add_ss(r, _mm_movehdup_ps(r));
        acc[i] = _mm_cvtss_f32(r);
    }
#else
    float a[NF4_NT][16];
    memset(a, 0, sizeof(a));
    for (int64_t c = 0; c < cols; c += bs) {
        float s[NF4_NT][16];
        memset(s, 0, sizeof(s));
        for (int64_t k = 0; k < bs; k += 32) {
            float whi[16], wlo[16];
            for (int j = 0; j < 16; j++) {
                uint8_t byte = q[(c + k) / 2 + j];
                whi[j] = W->code[byte >> 4];
                wlo[j] = W->code[byte & 15];
            }
            for (int i = 0; i < nt; i++) {
                const float *xi = xs + (int64_t)i * cols + c + k;
                for (int j = 0; j < 16; j++) s[i][j] += whi[j] * xi[j] + wlo[j] * xi[16 + j];
            }
        }
        float am = nf4_absmax(W, b0 + c / bs);
        for (int i = 0; i < nt; i++)
            for (int j = 0; j < 16; j++) a[i][j] += s[i][j] * am;
    }
    for (int i = 0; i < nt; i++) {
        float t = 0;
        for (int j = 0; j < 16; j++) t += a[i][j];
        acc[i] = t;
    }
#endif
}

void nf4_matmul_fused(const Nf4Tensor *W, const float *x, int64_t n_tok, float *y, const float *bias) {
    const int64_t rows = W->rows, cols = W->cols;
    if (rows == 0 || n_tok == 0) return;
    if (!fast_layout(W)) {
        // generic layout: dequantize a row, then plain dot products
#pragma omp parallel if(rows * cols > 65536)
        {
            float *wrow = (float *)malloc((size_t)(cols + 1) * sizeof(float));
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; r++) {
                if (!wrow) continue;
                nf4_dequantize_range(W, r * cols, cols, wrow);
                for (int64_t i = 0; i < n_tok; i++) {
                    const float *xi = x + i * cols;
                    float s = 0;
#pragma omp simd reduction(+ : s)
                    for (int64_t c = 0; c < cols; c++) s += wrow[c] * xi[c];
                    y[i * rows + r] = s + (bias ? bias[r] : 0.0f);
                }
            }
            free(wrow);
        }
        return;
    }
    float *xs = (float *)malloc((size_t)(n_tok * cols + 1) * sizeof(float));
    if (!xs) return;  // callers size their inputs; nothing sensible to do without memory
    shuffle_x(x, n_tok, cols, xs);
    for (int64_t i0 = 0; i0 < n_tok; i0 += NF4_NT) {
        int nt = (int)(n_tok - i0 < NF4_NT ? n_tok - i0 : NF4_NT);
#pragma omp parallel for schedule(static) if(rows * cols * nt > 65536)
        for (int64_t r = 0; r < rows; r++) {
            float acc[NF4_NT];
            fused_row(W, r, xs + i0 * cols, nt, cols, acc);
            for (int i = 0; i < nt; i++) y[(i0 + i) * rows + r] = acc[i] + (bias ? bias[r] : 0.0f);
        }
    }
    free(xs);
}

void nf4_matmul(const Nf4Tensor *W, const float *x, int64_t n_tok, float *y, const float *bias) {
    if (n_tok >= nf4_gemm_threshold) nf4_matmul_tiled(W, x, n_tok, y, bias);
    else nf4_matmul_fused(W, x, n_tok, y, bias);
}
