// safetensors files (Hugging Face): memory-mapped reader with full validation, sharded
// models through model.safetensors.index.json, and a writer.
//
// Format (huggingface/safetensors README): u64 little-endian header length N, then N bytes
// of JSON {name: {"dtype", "shape", "data_offsets": [begin, end)}, "__metadata__": {...}},
// offsets relative to the data section that follows the header. The reader checks: N fits in
// the file and is <= 100 MB, the JSON is an object of well-formed entries, every dtype is
// known, (end - begin) == prod(shape) * dtype size, offsets lie inside the data section and
// the tensors cover it exactly (no holes, no overlaps), names are unique.
#ifndef MOE_SAFETENSORS_H
#define MOE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u * 1000u * 1000u)

typedef enum { ST_F32 = 0, ST_F16, ST_BF16, ST_U8, ST_I8, ST_I32, ST_I64, ST_N_DTYPES } StDtype;

const char *st_dtype_name(int dtype);
int st_dtype_size(int dtype);
int st_dtype_from_name(const char *s);  // -1 when unknown / unsupported

typedef struct {
    char *name;
    int dtype;                   // StDtype
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    uint64_t begin, end;         // offsets in the data section
    const uint8_t *data;         // begin of the tensor's bytes inside the mapping
    int file;                    // index of the file (sharded models)
} StTensor;

typedef struct {
    char path[1024];
    void *map;                   // NULL when parsed from a caller's buffer
    size_t map_len;
    const uint8_t *data;         // data section
    uint64_t data_len;
    int n_tensors;
    StTensor *tensors;           // sorted by name
} StFile;

// Parse and validate a whole safetensors image held in memory (buf, len). `name` is used in
// messages. The tensors point into buf. Used by st_open and by the fuzz test.
int st_parse(StFile *f, const uint8_t *buf, size_t len, const char *name, MoeErr *err);
// mmap + st_parse.
int st_open(StFile *f, const char *path, MoeErr *err);
void st_close(StFile *f);
const StTensor *st_find(const StFile *f, const char *name);

// A model: one file (DIR/model.safetensors) or shards (DIR/model.safetensors.index.json).
typedef struct {
    char dir[1024];
    int n_files;
    StFile *files;
    int n_tensors;
    const StTensor **index;      // all tensors of all files, sorted by name
} StModel;

int st_model_open(StModel *m, const char *dir, MoeErr *err);
void st_model_close(StModel *m);
const StTensor *st_model_find(const StModel *m, const char *name);
// Find a tensor and check its dtype class and shape; shape may be NULL to skip the check.
// ndim < 0 skips too. Error names the tensor, the file and the field.
const StTensor *st_model_get(const StModel *m, const char *name, int ndim, const int64_t *shape, MoeErr *err);
const char *st_model_file_of(const StModel *m, const StTensor *t);
// Tell the kernel that a tensor's pages are no longer needed (keeps RSS near one tensor
// while streaming a large model).
void st_release(const StTensor *t);

// Convert n elements of a BF16 / F16 / F32 tensor to fp32 starting at element `off`.
int st_read_f32(const StTensor *t, int64_t off, int64_t n, float *out, MoeErr *err);

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
// round to nearest even (NaN kept NaN)
static inline uint16_t f32_to_bf16(float f) {
    union { uint32_t u; float f; } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);
    uint32_t r = 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)((v.u + r) >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// ---------------------------------------------------------------------------------------
// Writer: collect tensors (data copied), then write atomically.
typedef struct {
    int n, cap;
    StTensor *t;                 // data owned (malloc'd) through `data` cast
    char *metadata_json;         // optional JSON object text for __metadata__ (string values)
} StWriter;

void st_writer_init(StWriter *w);
// shape has ndim entries; data holds prod(shape) elements of dtype.
int st_writer_add(StWriter *w, const char *name, int dtype, int ndim, const int64_t *shape, const void *data,
                  MoeErr *err);
// convenience: fp32 data stored as dtype (F32, BF16 or F16)
int st_writer_add_f32(StWriter *w, const char *name, int dtype, int ndim, const int64_t *shape, const float *data,
                      MoeErr *err);
int st_writer_write(StWriter *w, const char *path, MoeErr *err);
void st_writer_free(StWriter *w);

#endif
