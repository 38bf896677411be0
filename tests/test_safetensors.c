// Tests of pretrained/safetensors: writer -> reader round trip (every dtype, bf16/f16
// conversions), sharded models through model.safetensors.index.json, every kind of corrupt
// header with the message naming the file and the field, and a bounded fuzz of the parser.
#include <unistd.h>

#include "../pretrained/safetensors.h"
#include "test.h"

static char tmpdir[256];

static void write_raw(const char *path, const char *json, size_t data_len) {
    size_t jl = strlen(json);
    FILE *fp = fopenCheck(path, "wb");
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)jl >> (8 * i));
    fwriteCheck(len8, 1, 8, fp);
    fwriteCheck(json, 1, jl, fp);
    for (size_t i = 0; i < data_len; i++) fputc((int)(i & 0xff), fp);
    fclose(fp);
}

// Expect st_open to fail with a message containing every one of the given words.
static void expect_bad(const char *name, const char *json, size_t data_len, const char *w1, const char *w2) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s.safetensors", tmpdir, name);
    write_raw(path, json, data_len);
    StFile f;
    MoeErr err = {{0}};
    test_begin(name);
    int rc = st_open(&f, path, &err);
    CHECK(rc != 0, "expected failure");
    if (rc == 0) st_close(&f);
    CHECK(strstr(err.msg, path) != NULL, "message does not name the file: %s", err.msg);
    if (w1) CHECK(strstr(err.msg, w1) != NULL, "message lacks '%s': %s", w1, err.msg);
    if (w2) CHECK(strstr(err.msg, w2) != NULL, "message lacks '%s': %s", w2, err.msg);
    test_end();
}

int main(void) {
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_safetensors_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        printf("FAIL mkdtemp\n");
        return 1;
    }
    MoeErr err = {{0}};
    char path[1200];

    // ---------------------------------------------------------------- round trip
    test_begin("roundtrip_all_dtypes");
    {
        StWriter w;
        st_writer_init(&w);
        float f32[6] = {1.5f, -2.25f, 3e-3f, 1e4f, -0.0f, 65504.0f};
        int64_t s23[2] = {2, 3};
        CHECK(st_writer_add(&w, "a.f32", ST_F32, 2, s23, f32, &err) == 0, "%s", err.msg);
        CHECK(st_writer_add_f32(&w, "b.bf16", ST_BF16, 2, s23, f32, &err) == 0, "%s", err.msg);
        CHECK(st_writer_add_f32(&w, "c.f16", ST_F16, 2, s23, f32, &err) == 0, "%s", err.msg);
        uint8_t u8[5] = {0, 1, 127, 128, 255};
        int64_t s5[1] = {5};
        CHECK(st_writer_add(&w, "d.u8", ST_U8, 1, s5, u8, &err) == 0, "%s", err.msg);
        int8_t i8[5] = {-128, -1, 0, 1, 127};
        CHECK(st_writer_add(&w, "e.i8", ST_I8, 1, s5, i8, &err) == 0, "%s", err.msg);
        int64_t i64[2] = {-5, 1LL << 40};
        int64_t s2[1] = {2};
        CHECK(st_writer_add(&w, "f.i64", ST_I64, 1, s2, i64, &err) == 0, "%s", err.msg);
        int64_t s0[1] = {0};
        CHECK(st_writer_add(&w, "g.empty", ST_F32, 1, s0, NULL, &err) == 0, "%s", err.msg);
        CHECK(st_writer_add(&w, "h.scalar", ST_F32, 0, NULL, f32, &err) == 0, "%s", err.msg);
        CHECK(st_writer_add(&w, "a.f32", ST_F32, 2, s23, f32, &err) != 0, "duplicate name accepted");
        w.metadata_json = strdup("{\"format\":\"pt\"}");
        snprintf(path, sizeof(path), "%s/rt.safetensors", tmpdir);
        CHECK(st_writer_write(&w, path, &err) == 0, "%s", err.msg);
        st_writer_free(&w);
        StFile f;
        int rc = st_open(&f, path, &err);
        CHECK(rc == 0, "open: %s", err.msg);
        if (rc == 0) {
            CHECK(f.n_tensors == 8, "n_tensors %d", f.n_tensors);
            const StTensor *t = st_find(&f, "a.f32");
            CHECK(t && t->dtype == ST_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3, "a.f32 meta");
            float out[6];
            if (t) {
                CHECK(st_read_f32(t, 0, 6, out, &err) == 0, "%s", err.msg);
                for (int i = 0; i < 6; i++) CHECK(out[i] == f32[i], "f32[%d]", i);
            }
            t = st_find(&f, "b.bf16");
            if (t && st_read_f32(t, 0, 6, out, &err) == 0) {
                CHECK(out[0] == 1.5f && out[1] == -2.25f, "bf16 exact values");
                for (int i = 0; i < 6; i++) CHECK(fabsf(out[i] - f32[i]) <= fabsf(f32[i]) * (1.0f / 256), "bf16[%d]", i);
            } else CHECK(0, "b.bf16 read");
            t = st_find(&f, "c.f16");
            if (t && st_read_f32(t, 0, 6, out, &err) == 0) {
                CHECK(out[0] == 1.5f && out[5] == 65504.0f && out[3] == 1e4f, "f16 exact values");
                CHECK(fabsf(out[2] - 3e-3f) < 3e-3f / 1024, "f16 small value %g", out[2]);
            } else CHECK(0, "c.f16 read");
            t = st_find(&f, "d.u8");
            CHECK(t && t->numel == 5 && memcmp(t->data, u8, 5) == 0, "u8");
            t = st_find(&f, "f.i64");
            CHECK(t && memcmp(t->data, i64, 16) == 0, "i64");
            t = st_find(&f, "g.empty");
            CHECK(t && t->numel == 0, "empty tensor");
            t = st_find(&f, "h.scalar");
            CHECK(t && t->ndim == 0 && t->numel == 1, "scalar");
            CHECK(st_find(&f, "nope") == NULL, "missing tensor found");
            CHECK(((uintptr_t)f.data & 7) == 0, "data section 8-aligned");
            st_close(&f);
        }
    }
    test_end();

    test_begin("bf16_f16_conversions");
    CHECK(f32_to_bf16(1.0f) == 0x3f80, "bf16(1)");
    CHECK(f32_to_bf16(1.00390625f) == 0x3f80, "round half to even down");  // 1 + 2^-8: tie -> even
    CHECK(f32_to_bf16(1.01171875f) == 0x3f82, "round half to even up");    // 1 + 3*2^-8: tie -> even (up)
    CHECK(f32_to_f16(1.0f) == 0x3c00 && f32_to_f16(-2.0f) == 0xc000, "f16 basics");
    CHECK(f32_to_f16(65504.0f) == 0x7bff && f32_to_f16(1e6f) == 0x7c00, "f16 max / overflow");
    CHECK(f16_to_f32(0x0001) == ldexpf(1.0f, -24), "f16 smallest subnormal");
    CHECK(f32_to_f16(ldexpf(1.0f, -24)) == 0x0001, "to f16 subnormal");
    for (uint32_t h = 0; h < 0x7c00; h++) {  // every finite positive half round-trips
        if (f32_to_f16(f16_to_f32((uint16_t)h)) != h) {
            CHECK(0, "f16 roundtrip %04x", h);
            break;
        }
    }
    test_end();

    // ---------------------------------------------------------------- sharded model
    test_begin("sharded_model");
    {
        char dir[512];
        snprintf(dir, sizeof(dir), "%s/sharded", tmpdir);
        CHECK(make_dirs(dir, &err) == 0, "%s", err.msg);
        float v[4] = {1, 2, 3, 4};
        int64_t s4[1] = {4};
        for (int k = 0; k < 2; k++) {
            StWriter w;
            st_writer_init(&w);
            char nm[64];
            snprintf(nm, sizeof(nm), "layer.%d.w", k);
            st_writer_add(&w, nm, ST_F32, 1, s4, v, &err);
            snprintf(nm, sizeof(nm), "layer.%d.b", k);
            st_writer_add(&w, nm, ST_F32, 1, s4, v, &err);
            snprintf(path, sizeof(path), "%s/model-%05d-of-00002.safetensors", dir, k + 1);
            CHECK(st_writer_write(&w, path, &err) == 0, "%s", err.msg);
            st_writer_free(&w);
        }
        snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
        FILE *fp = fopenCheck(path, "w");
        fprintf(fp, "{\"metadata\": {\"total_size\": 64}, \"weight_map\": {"
                    "\"layer.0.w\": \"model-00001-of-00002.safetensors\", \"layer.0.b\": \"model-00001-of-00002.safetensors\","
                    "\"layer.1.w\": \"model-00002-of-00002.safetensors\", \"layer.1.b\": \"model-00002-of-00002.safetensors\"}}");
        fclose(fp);
        StModel m;
        int rc = st_model_open(&m, dir, &err);
        CHECK(rc == 0, "%s", err.msg);
        if (rc == 0) {
            CHECK(m.n_files == 2 && m.n_tensors == 4, "files %d tensors %d", m.n_files, m.n_tensors);
            const StTensor *t = st_model_get(&m, "layer.1.b", 1, s4, &err);
            CHECK(t && t->file == 1, "layer.1.b in shard 2");
            int64_t bad[1] = {5};
            CHECK(st_model_get(&m, "layer.1.b", 1, bad, &err) == NULL && strstr(err.msg, "shape") &&
                      strstr(err.msg, "layer.1.b") && strstr(err.msg, "model-00002-of-00002"),
                  "wrong shape message: %s", err.msg);
            CHECK(st_model_get(&m, "layer.7.w", -1, NULL, &err) == NULL && strstr(err.msg, "missing tensor 'layer.7.w'"),
                  "missing tensor message: %s", err.msg);
            st_model_close(&m);
        }
        // an index naming a tensor its shard lacks
        fp = fopenCheck(path, "w");
        fprintf(fp, "{\"weight_map\": {\"layer.0.w\": \"model-00001-of-00002.safetensors\", "
                    "\"layer.9.w\": \"model-00002-of-00002.safetensors\"}}");
        fclose(fp);
        CHECK(st_model_open(&m, dir, &err) != 0 && strstr(err.msg, "layer.9.w") && strstr(err.msg, "index.json"),
              "index missing tensor: %s", err.msg);
        fp = fopenCheck(path, "w");
        fprintf(fp, "{\"weight_map\": {\"layer.0.w\": \"../etc/passwd\"}}");
        fclose(fp);
        CHECK(st_model_open(&m, dir, &err) != 0 && strstr(err.msg, "bad shard file name"), "path escape: %s", err.msg);
        fp = fopenCheck(path, "w");
        fprintf(fp, "{\"weight_map\": [1,2]}");
        fclose(fp);
        CHECK(st_model_open(&m, dir, &err) != 0 && strstr(err.msg, "weight_map"), "bad weight_map: %s", err.msg);
        fp = fopenCheck(path, "w");
        fprintf(fp, "{\"weight_map\": {\"layer.0.w\": \"model-00003-of-00002.safetensors\"}}");
        fclose(fp);
        CHECK(st_model_open(&m, dir, &err) != 0 && strstr(err.msg, "model-00003-of-00002"), "missing shard: %s", err.msg);
        snprintf(dir, sizeof(dir), "%s/nothing_here", tmpdir);
        CHECK(st_model_open(&m, dir, &err) != 0 && strstr(err.msg, "model.safetensors"), "empty dir: %s", err.msg);
    }
    test_end();

    // ---------------------------------------------------------------- corrupt inputs
    const char *good = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    {
        // control: the good header opens
        snprintf(path, sizeof(path), "%s/good.safetensors", tmpdir);
        write_raw(path, good, 16);
        StFile f;
        test_begin("control_good_header");
        CHECK(st_open(&f, path, &err) == 0, "%s", err.msg);
        st_close(&f);
        test_end();
    }
    {
        snprintf(path, sizeof(path), "%s/header_beyond.safetensors", tmpdir);
        FILE *fp = fopenCheck(path, "wb");
        uint8_t len8[8] = {0x00, 0x10, 0, 0, 0, 0, 0, 0};  // 4096 > file
        fwriteCheck(len8, 1, 8, fp);
        fwriteCheck("{}", 1, 2, fp);
        fclose(fp);
        StFile f;
        test_begin("bad_header_length_beyond_file");
        CHECK(st_open(&f, path, &err) != 0 && strstr(err.msg, path) && strstr(err.msg, "beyond the end"), "%s", err.msg);
        test_end();
        fp = fopenCheck(path, "wb");
        uint8_t huge[8] = {0, 0, 0, 0, 0, 0, 0, 0x80};
        fwriteCheck(huge, 1, 8, fp);
        fclose(fp);
        test_begin("bad_header_length_huge");
        CHECK(st_open(&f, path, &err) != 0 && strstr(err.msg, "100 MB"), "%s", err.msg);
        test_end();
        fp = fopenCheck(path, "wb");
        fwriteCheck(huge, 1, 5, fp);
        fclose(fp);
        test_begin("bad_file_too_short");
        CHECK(st_open(&f, path, &err) != 0 && strstr(err.msg, "too short"), "%s", err.msg);
        test_end();
        test_begin("bad_missing_file");
        CHECK(st_open(&f, "/nonexistent/x.safetensors", &err) != 0 && strstr(err.msg, "/nonexistent/x.safetensors"), "%s",
              err.msg);
        test_end();
    }
    expect_bad("bad_invalid_json", "{\"w\":{\"dtype\":\"F32\",", 16, "not valid JSON", NULL);
    expect_bad("bad_json_not_object", "[1, 2, 3]", 0, "not an object", NULL);
    expect_bad("bad_unsupported_dtype", "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
               "unsupported dtype", "'w'");
    expect_bad("bad_dtype_size_vs_shape", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,16]}}", 16,
               "'w'", "data_offsets");
    expect_bad("bad_offsets_out_of_range", "{\"w\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]}}", 16,
               "beyond the data section", "'w'");
    expect_bad("bad_offsets_overlap",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
               16, "overlaps", "data_offsets");
    expect_bad("bad_offsets_hole",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}",
               16, "hole", "'b'");
    expect_bad("bad_trailing_data", good, 20, "cover 16 of the 20", NULL);
    expect_bad("bad_offsets_reversed", "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8,
               "ends before", "'w'");
    expect_bad("bad_missing_dtype", "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'dtype'", "'w'");
    expect_bad("bad_missing_shape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "'shape'", "'w'");
    expect_bad("bad_negative_shape", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "'shape'",
               "'w'");
    expect_bad("bad_fractional_offset", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.5]}}", 8,
               "data_offsets", "'w'");
    expect_bad("bad_duplicate_name",
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               8, "twice", "'w'");
    expect_bad("bad_metadata_not_strings", "{\"__metadata__\":{\"a\":1}}", 0, "__metadata__", NULL);
    expect_bad("bad_shape_overflow",
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
               "shape", "'w'");

    // ---------------------------------------------------------------- fuzz
    test_begin("fuzz_header_parser");
    {
        const char *base =
            "{\"__metadata__\":{\"format\":\"pt\"},\"model.a\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
            "\"model.b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}";
        size_t bl = strlen(base);
        size_t cap = 8 + bl + 64 + 32;
        uint8_t *buf = (uint8_t *)malloc(cap);
        uint64_t rng = rng_seed(7);
        static const char alphabet[] = "{}[]\":,0123456789-.eE +FIUBtruefalsenull\\";
        int n_ok = 0, n_bad = 0;
        double t0 = wall_seconds();
        for (int it = 0; it < 200000 && wall_seconds() - t0 < 2.0; it++) {
            size_t hl = bl;
            memcpy(buf + 8, base, bl);
            int nm = 1 + (int)(rng_next_u64(&rng) % 4);
            for (int k = 0; k < nm; k++) {
                size_t pos = rng_next_u64(&rng) % hl;
                int op = (int)(rng_next_u64(&rng) % 4);
                char c = alphabet[rng_next_u64(&rng) % (sizeof(alphabet) - 1)];
                if (op == 0) buf[8 + pos] = (uint8_t)c;                                   // replace
                else if (op == 1) buf[8 + pos] = (uint8_t)(rng_next_u64(&rng) & 0xff);    // random byte
                else if (op == 2 && hl > 1) { memmove(buf + 8 + pos, buf + 9 + pos, hl - pos - 1); hl--; }  // delete
                else if (op == 3 && hl < bl + 64) { memmove(buf + 9 + pos, buf + 8 + pos, hl - pos); buf[8 + pos] = (uint8_t)c; hl++; }
            }
            size_t dl = 16 + (rng_next_u64(&rng) % 8 == 0 ? (size_t)(rng_next_u64(&rng) % 9) : 0);
            uint64_t lenfield = hl;
            if (rng_next_u64(&rng) % 16 == 0) lenfield = rng_next_u64(&rng) % (hl + dl + 16);  // lie about the length
            for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(lenfield >> (8 * i));
            memset(buf + 8 + hl, 0x3c, dl);
            size_t total = 8 + hl + dl;
            // an exact-size heap copy so ASan catches any read past the end
            uint8_t *img = (uint8_t *)malloc(total);
            memcpy(img, buf, total);
            StFile f;
            MoeErr e2 = {{0}};
            if (st_parse(&f, img, total, "fuzz.safetensors", &e2) == 0) {
                n_ok++;
                for (int i = 0; i < f.n_tensors; i++) {  // touch every byte the reader claims is valid
                    const StTensor *t = &f.tensors[i];
                    volatile uint8_t s = 0;
                    for (uint64_t b = 0; b < t->end - t->begin; b++) s ^= t->data[b];
                    (void)s;
                    if (t->data + (t->end - t->begin) > img + total) CHECK(0, "tensor past end");
                }
                st_close(&f);
            } else {
                n_bad++;
                if (strstr(e2.msg, "fuzz.safetensors") == NULL) {
                    CHECK(0, "error without file name: %s", e2.msg);
                    free(img);
                    break;
                }
            }
            free(img);
        }
        free(buf);
        CHECK(n_ok > 0 && n_bad > 0, "fuzz coverage ok=%d bad=%d", n_ok, n_bad);
        printf("  fuzz: %d accepted, %d rejected\n", n_ok, n_bad);
    }
    test_end();

    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    return test_summary();
}
