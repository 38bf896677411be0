// Tokenizer tests: byte<->unicode map, pre-split of known strings for every pattern, a
// hand-made vocab/merges with known ids, first merges of training, round trips of random
// byte strings (invalid UTF-8, NUL), special tokens, save/load, corrupt tokenizer.json
// files, and a bounded fuzz of the JSON loader.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/util.h"
#include "../tokenizer/tok_internal.h"
#include "../tokenizer/tokenizer.h"
#include "test.h"

static char g_dir[256];

// ---------------------------------------------------------------------------------------
// helpers

typedef struct {
    char pieces[64][64];
    int n;
} PieceCollector;

static void collect(void *ctx, const char *p, size_t n) {
    PieceCollector *c = ctx;
    if (c->n < 64 && n < 63) {
        memcpy(c->pieces[c->n], p, n);
        c->pieces[c->n][n] = 0;
    } else if (c->n < 64) {
        strcpy(c->pieces[c->n], "<long>");
    }
    c->n++;
}

// build a tokenizer with no merges for a pattern (training on an empty-ish corpus)
static Tokenizer *tiny_tok(const char *pattern, int vocab) {
    TokTrainConfig cfg;
    tok_train_config_default(&cfg);
    cfg.pattern = pattern;
    cfg.vocab_size = vocab;
    const char *text = "hello hello hello world world";
    size_t len = strlen(text);
    MoeErr err;
    Tokenizer *tok = tokenizer_train(&text, &len, 1, &cfg, &err);
    if (!tok) printf("  tiny_tok: %s\n", err.msg);
    return tok;
}

static int check_split(const char *pattern, const char *text, const char *const *want, int n_want) {
    Tokenizer *tok = tiny_tok(pattern, 259);
    if (!tok) return 0;
    TokSplitter sp;
    tok_splitter_init(&sp);
    PieceCollector c = {0};
    tok_presplit(tok, &sp, text, strlen(text), collect, &c);
    int ok = c.n == n_want;
    for (int i = 0; ok && i < n_want; i++) ok = strcmp(c.pieces[i], want[i]) == 0;
    if (!ok) {
        printf("  split '%s' with %s gave %d pieces:", text, pattern, c.n);
        for (int i = 0; i < c.n && i < 64; i++) printf(" [%s]", c.pieces[i]);
        printf("\n");
    }
    tok_splitter_free(&sp);
    tokenizer_free(tok);
    return ok;
}

static int write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    fwrite(s, 1, strlen(s), f);
    fclose(f);
    return 0;
}

static int roundtrip(Tokenizer *tok, const char *s, size_t n, int flags) {
    TokIds ids = {0};
    MoeErr err;
    if (tokenizer_encode(tok, s, n, flags, &ids, &err) != 0) return 0;
    char *back = NULL;
    size_t nb = 0;
    int ok = tokenizer_decode(tok, ids.ids, ids.n, 0, &back, &nb, &err) == 0 && nb == n && memcmp(back, s, n) == 0;
    free(back);
    tok_ids_free(&ids);
    return ok;
}

// ---------------------------------------------------------------------------------------

static void test_byte_map(void) {
    test_begin("tokenizer_byte_unicode_map");
    uint32_t cp[256];
    tok_byte_to_unicode(cp);
    CHECK(cp[' '] == 0x120, "space -> U+%04X, expected U+0120", cp[' ']);
    CHECK(cp['\n'] == 0x10A, "newline -> U+%04X, expected U+010A", cp['\n']);
    CHECK(cp[0] == 0x100, "NUL -> U+%04X, expected U+0100", cp[0]);
    CHECK(cp['A'] == 'A' && cp['!'] == '!' && cp['~'] == '~', "printable ASCII maps to itself");
    CHECK(cp[0x7F] == 0x121, "DEL -> U+%04X, expected U+0121", cp[0x7F]);
    CHECK(cp[0xAD] == 0x143, "soft hyphen -> U+%04X, expected U+0143", cp[0xAD]);
    CHECK(cp[0xE9] == 0xE9, "e-acute byte maps to itself");
    int bij = 1;
    for (int b = 0; b < 256; b++) bij &= tok_unicode_to_byte(cp[b]) == b;
    CHECK(bij, "unicode_to_byte inverts byte_to_unicode");
    CHECK(tok_unicode_to_byte(0x20) == -1 && tok_unicode_to_byte(0x144) == -1, "unmapped code points give -1");
    char *t = tok_bytes_to_text(" a\n", 3);
    CHECK(t && strcmp(t, "\xc4\xa0" "a\xc4\x8a") == 0, "bytes_to_text(\" a\\n\") = \"Ġ a Ċ\"");
    char out[8];
    size_t n = tok_text_to_bytes(t, strlen(t), out);
    CHECK(n == 3 && memcmp(out, " a\n", 3) == 0, "text_to_bytes inverts");
    free(t);
    test_end();
}

static void test_utf8(void) {
    test_begin("tokenizer_utf8_validation");
    const unsigned char ok2[] = {0xC3, 0xA9}, ok4[] = {0xF0, 0x9F, 0x98, 0x80};
    const unsigned char over[] = {0xC0, 0xAF}, sur[] = {0xED, 0xA0, 0x80}, big[] = {0xF4, 0x90, 0x80, 0x80};
    const unsigned char trunc[] = {0xE2, 0x82};
    CHECK(tok_utf8_valid_len(ok2, 2) == 2, "2-byte");
    CHECK(tok_utf8_valid_len(ok4, 4) == 4, "4-byte");
    CHECK(tok_utf8_valid_len(over, 2) == 0, "overlong rejected");
    CHECK(tok_utf8_valid_len(sur, 3) == 0, "surrogate rejected");
    CHECK(tok_utf8_valid_len(big, 4) == 0, "> U+10FFFF rejected");
    CHECK(tok_utf8_valid_len(trunc, 2) == 0, "truncated rejected");
    test_end();
}

static void test_presplit(void) {
    test_begin("tokenizer_presplit_gpt2");
    {
        const char *w[] = {"Hello", " world", "'s", " ", " test", " 123", "!!", "\n"};
        CHECK(check_split("gpt2", "Hello world's  test 123!!\n", w, 8), "gpt2 pieces");
    }
    test_end();
    test_begin("tokenizer_presplit_gpt4");
    {
        const char *w[] = {"Hello", " world", "'S", " ", " test", " ", "123", "45", ".\n", "\t", " x"};
        CHECK(check_split("gpt4", "Hello world'S  test 12345.\n\t x", w, 11), "gpt4 pieces");
    }
    test_end();
    test_begin("tokenizer_presplit_qwen");
    {
        const char *w[] = {"abc", " ", "1", "2", "3", " Déjà"};
        CHECK(check_split("qwen", "abc 123 D\xc3\xa9j\xc3\xa0", w, 6), "qwen pieces");
    }
    test_end();
    test_begin("tokenizer_presplit_deepseek");
    {
        const char *w[] = {"Hello", " world", " ", "1", "2", " ", "\xe4\xb8\xad\xe6\x96\x87", "!", "\n"};
        CHECK(check_split("deepseek", "Hello world 12 \xe4\xb8\xad\xe6\x96\x87!\n", w, 9), "deepseek pieces");
    }
    test_end();
    test_begin("tokenizer_presplit_line_anchors");
    {
        // ^ and $ are line anchors (as in Oniguruma, which HF uses)
        const char *w[] = {"a", "  ", "\nb", "  ", "\n", "  ", "c"};
        CHECK(check_split(" +$|^ +", "a  \nb  \n  c", w, 7), "line anchors");
    }
    test_end();
    test_begin("tokenizer_presplit_invalid_utf8");
    {
        // invalid bytes are single pieces; the valid runs around them are split normally
        const char *w[] = {"ab", "\xff", "\xfe", " cd", "\xc3"};
        CHECK(check_split("gpt2", "ab\xff\xfe cd\xc3", w, 5), "invalid bytes isolated");
    }
    test_end();
}

static const char *TINY_JSON =
    "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":7,\"content\":\"<|eot|>\",\"special\":true}],"
    "\"normalizer\":null,"
    "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true},"
    "\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"vocab\":"
    "{\"a\":0,\"b\":1,\"c\":2,\"ab\":3,\"abc\":4,\"\xc4\xa0\":5,\"\xc4\xa0" "a\":6,\"<|eot|>\":7},"
    "\"merges\":[\"a b\",[\"ab\",\"c\"],\"\xc4\xa0 a\"]}}";

static void test_tiny_vocab(void) {
    test_begin("tokenizer_tiny_vocab_known_ids");
    MoeErr err;
    Tokenizer *tok = tokenizer_load_json(TINY_JSON, strlen(TINY_JSON), "tiny.json", &err);
    CHECK(tok != NULL, "load: %s", tok ? "" : err.msg);
    if (tok) {
        TokIds ids = {0};
        tokenizer_encode(tok, "abc ab a", 8, 0, &ids, &err);
        int want[] = {4, 5, 3, 6};
        CHECK(ids.n == 4, "got %zu ids, expected 4", ids.n);
        for (size_t i = 0; i < ids.n && i < 4; i++) CHECK(ids.ids[i] == want[i], "id %zu: %d expected %d", i, ids.ids[i], want[i]);
        ids.n = 0;
        tokenizer_encode(tok, "abcd<|eot|>a", 12, TOK_ENCODE_SPECIAL, &ids, &err);
        // 'd' is not in the vocab and there is no unk: dropped, as HF does
        CHECK(ids.n == 3 && ids.ids[0] == 4 && ids.ids[1] == 7 && ids.ids[2] == 0, "special token split out");
        CHECK(tokenizer_eos_id(tok) == -1 && tokenizer_is_special(tok, 7), "special flag");
        CHECK(tokenizer_token_id(tok, " a", 2) == 6 && tokenizer_token_id(tok, "<|eot|>", 7) == 7, "token_id lookups");
        size_t len;
        const char *b = tokenizer_token_bytes(tok, 6, &len);
        CHECK(b && len == 2 && memcmp(b, " a", 2) == 0, "token 6 bytes are ' a'");
        CHECK(tokenizer_token_bytes(tok, 99, &len) == NULL && len == 0, "out of range id");
        tok_ids_free(&ids);
        tokenizer_free(tok);
    }
    test_end();
}

// ByteLevel add_prefix_space: every piece without a leading space gets one (HF)
static void test_prefix_space(void) {
    test_begin("tokenizer_bytelevel_add_prefix_space");
    const char *json =
        "{\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"use_regex\":true},"
        "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"ab\":3,\"\xc4\xa0\":4,\"\xc4\xa0" "ab\":5},"
        "\"merges\":[\"a b\",\"\xc4\xa0 ab\"]}}";
    MoeErr err;
    Tokenizer *tok = tokenizer_load_json(json, strlen(json), "prefix.json", &err);
    CHECK(tok != NULL, "load: %s", tok ? "" : err.msg);
    if (tok) {
        TokIds ids = {0};
        tokenizer_encode(tok, "ab ab", 5, 0, &ids, &err);
        CHECK(ids.n == 2 && ids.ids[0] == 5 && ids.ids[1] == 5, "'ab ab' -> ' ab', ' ab' (%zu ids)", ids.n);
        tok_ids_free(&ids);
        tokenizer_free(tok);
    }
    test_end();
}

// hand-made merges x x -> xx, xx xx -> xxxx: checks the short (scan) and long (heap) BPE paths
static void test_long_pieces(void) {
    test_begin("tokenizer_bpe_short_and_long_pieces");
    const char *json =
        "{\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false},"
        "\"model\":{\"type\":\"BPE\",\"vocab\":{\"x\":0,\"xx\":1,\"xxxx\":2,\"y\":3},\"merges\":[\"x x\",\"xx xx\"]}}";
    MoeErr err;
    Tokenizer *tok = tokenizer_load_json(json, strlen(json), "xx.json", &err);
    CHECK(tok != NULL, "load: %s", tok ? "" : err.msg);
    if (tok) {
        int lens[] = {1, 2, 3, 40, 47, 48, 49, 63, 64, 65, 66, 100, 101, 102, 103, 5000};
        for (int k = 0; k < 16; k++) {
            int n = lens[k];
            char *s = malloc((size_t)n);
            memset(s, 'x', (size_t)n);
            TokIds ids = {0};
            tokenizer_encode(tok, s, (size_t)n, 0, &ids, &err);
            // expected: n/4 x "xxxx", then "xx" if n%4 >= 2, then "x" if odd
            size_t want_n = (size_t)(n / 4) + (n % 4 >= 2) + (n % 2);
            int ok = ids.n == want_n;
            for (int i = 0; ok && i < n / 4; i++) ok = ids.ids[i] == 2;
            if (ok && n % 4 >= 2) ok = ids.ids[n / 4] == 1;
            if (ok && n % 2) ok = ids.ids[ids.n - 1] == 0;
            CHECK(ok, "run of %d x: %zu ids, expected %zu", n, ids.n, want_n);
            tok_ids_free(&ids);
            free(s);
        }
        // a mixed long piece: the heap path must give the scan path's answer piecewise
        TokIds a = {0}, b = {0};
        tokenizer_encode(tok, "xxxxxyxxxxxxx", 13, 0, &a, &err);
        int want[] = {2, 0, 3, 2, 1, 0};
        CHECK(a.n == 6, "mixed: %zu ids", a.n);
        for (size_t i = 0; i < a.n && i < 6; i++) CHECK(a.ids[i] == want[i], "mixed id %zu", i);
        // 130 bytes in one piece (heap path): runs of 5, 12 (x9) and 7 x between the y's
        char big[130];
        for (int i = 0; i < 10; i++) memcpy(big + 13 * i, "xxxxxyxxxxxxx", 13);
        tokenizer_encode(tok, big, 130, 0, &b, &err);
        int exp[64], ne = 0, runs[11] = {5, 12, 12, 12, 12, 12, 12, 12, 12, 12, 7};
        for (int r = 0; r < 11; r++) {
            if (r) exp[ne++] = 3;
            for (int i = 0; i < runs[r] / 4; i++) exp[ne++] = 2;
            if (runs[r] % 4 >= 2) exp[ne++] = 1;
            if (runs[r] % 2) exp[ne++] = 0;
        }
        int same = (int)b.n == ne;
        for (int i = 0; same && i < ne; i++) same = b.ids[i] == exp[i];
        CHECK(same, "long mixed piece (heap path): %zu ids, expected %d", b.n, ne);
        tok_ids_free(&a);
        tok_ids_free(&b);
        tokenizer_free(tok);
    }
    test_end();
}

static void test_train_first_merges(void) {
    test_begin("tokenizer_train_first_merges");
    TokTrainConfig cfg;
    tok_train_config_default(&cfg);
    cfg.pattern = "gpt2";
    cfg.vocab_size = 256 + 4 + 3;
    const char *text = "ab ab ab ab cd cd";
    size_t len = strlen(text);
    MoeErr err;
    Tokenizer *tok = tokenizer_train(&text, &len, 1, &cfg, &err);
    CHECK(tok != NULL, "train: %s", tok ? "" : err.msg);
    if (tok) {
        // counts: (a,b) 4, (' ',ab) 3, then (' ',c) and (c,d) tie at 2: smaller id pair first
        CHECK(tokenizer_n_merges(tok) == 4, "%d merges", tokenizer_n_merges(tok));
        const char *want[] = {"ab", " ab", " c", " cd"};
        for (int i = 0; i < 4 && i < tokenizer_n_merges(tok); i++) {
            size_t l;
            const char *b = tokenizer_token_bytes(tok, 256 + i, &l);
            CHECK(b && l == strlen(want[i]) && memcmp(b, want[i], l) == 0, "merge %d is '%s'", i, want[i]);
        }
        CHECK(tokenizer_vocab_size(tok) == 263, "vocab %d", tokenizer_vocab_size(tok));
        CHECK(tokenizer_bos_id(tok) == 260 && tokenizer_eos_id(tok) == 261 && tokenizer_pad_id(tok) == 262,
              "bos/eos/pad %d %d %d", tokenizer_bos_id(tok), tokenizer_eos_id(tok), tokenizer_pad_id(tok));
        TokIds ids = {0};
        tokenizer_encode(tok, "ab cd", 5, 0, &ids, &err);
        CHECK(ids.n == 2 && ids.ids[0] == 256 && ids.ids[1] == 259, "encode 'ab cd'");
        tok_ids_free(&ids);
        tokenizer_free(tok);
    }
    // min_frequency stops early
    cfg.min_frequency = 3;
    cfg.vocab_size = 1000;
    tok = tokenizer_train(&text, &len, 1, &cfg, &err);
    CHECK(tok && tokenizer_n_merges(tok) == 2, "min_frequency 3 keeps 2 merges");
    tokenizer_free(tok);
    // bad configs
    cfg.vocab_size = 100;
    CHECK(tokenizer_train(&text, &len, 1, &cfg, &err) == NULL && strstr(err.msg, "vocab_size"), "vocab too small refused");
    cfg.vocab_size = 300;
    cfg.pattern = "([unclosed";
    CHECK(tokenizer_train(&text, &len, 1, &cfg, &err) == NULL && strstr(err.msg, "compile"), "bad regex refused: %s", err.msg);
    test_end();
}

static char *make_corpus(size_t *n) {
    const char *parts[] = {
        "In the beginning God created the heaven and the earth. ",
        "int main(int argc, char **argv) {\n    return 0;\n}\n",
        "The year 1611: 12,345.67 units; x = 0x1F + 42\n",
        "Caf\xc3\xa9 na\xc3\xafve \xe4\xb8\xad\xe6\x96\x87 \xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 \xf0\x9f\x98\x80\n",
        "    indented\t\ttabs   and   spaces\r\n\n\n",
    };
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    uint64_t rng = rng_seed(7);
    while (len + 200 < cap) {
        const char *p = parts[rng_next_u64(&rng) % 5];
        memcpy(buf + len, p, strlen(p));
        len += strlen(p);
    }
    *n = len;
    return buf;
}

static void random_bytes(uint64_t *rng, char *s, size_t n) {
    static const char *pool[] = {" ", "  ", "\n", "\t", "a", "the", "Z", "9", "123", "'s", "\xc3\xa9", "\xe4\xb8\xad",
                                 "\xf0\x9f\x98\x80", "!", "<|", "|>", "\xff", "\xc3", "\x80", "\xed\xa0\x80", "\0"};
    size_t i = 0;
    while (i < n) {
        uint64_t r = rng_next_u64(rng);
        if (r % 4 == 0) {
            s[i++] = (char)(r >> 8);  // any byte
            continue;
        }
        const char *p = pool[(r >> 8) % 21];
        size_t l = (r >> 8) % 21 == 20 ? 1 : strlen(p);
        for (size_t k = 0; k < l && i < n; k++) s[i++] = p[k];
    }
}

static void test_roundtrip(void) {
    const char *patterns[] = {"gpt2", "gpt4", "qwen", "deepseek"};
    size_t clen;
    char *corpus = make_corpus(&clen);
    for (int p = 0; p < 4; p++) {
        char name[64];
        snprintf(name, sizeof(name), "tokenizer_roundtrip_random_bytes_%s", patterns[p]);
        test_begin(name);
        TokTrainConfig cfg;
        tok_train_config_default(&cfg);
        cfg.pattern = patterns[p];
        cfg.vocab_size = 700;
        MoeErr err;
        const char *c = corpus;
        Tokenizer *tok = tokenizer_train(&c, &clen, 1, &cfg, &err);
        CHECK(tok != NULL, "train: %s", tok ? "" : err.msg);
        if (!tok) {
            test_end();
            continue;
        }
        CHECK(roundtrip(tok, corpus, clen, 0), "corpus round trip");
        uint64_t rng = rng_seed(100 + (uint64_t)p);
        char buf[600];
        int bad = 0;
        for (int it = 0; it < 400; it++) {
            size_t n = rng_next_u64(&rng) % sizeof(buf);
            random_bytes(&rng, buf, n);
            if (!roundtrip(tok, buf, n, 0)) bad++;
            if (!roundtrip(tok, buf, n, TOK_ENCODE_SPECIAL)) bad++;
        }
        CHECK(bad == 0, "%d of 800 random strings did not round-trip", bad);
        // long whitespace / letter runs (heap BPE path, big pieces)
        char *big = malloc(100000);
        memset(big, ' ', 100000);
        CHECK(roundtrip(tok, big, 100000, 0), "100k spaces");
        for (int i = 0; i < 100000; i++) big[i] = "ab"[i % 2];
        CHECK(roundtrip(tok, big, 100000, 0), "100k letters");
        free(big);
        // streaming: per-token bytes concatenate to the text
        TokIds ids = {0};
        tokenizer_encode(tok, corpus, 3000, 0, &ids, &err);
        char *cat = malloc(4000);
        size_t o = 0;
        for (size_t i = 0; i < ids.n; i++) {
            size_t l;
            const char *b = tokenizer_token_bytes(tok, ids.ids[i], &l);
            if (b && o + l <= 4000) memcpy(cat + o, b, l);
            o += l;
        }
        CHECK(o == 3000 && memcmp(cat, corpus, 3000) == 0, "token_bytes stream equals the text");
        free(cat);
        tok_ids_free(&ids);
        tokenizer_free(tok);
        test_end();
    }
    free(corpus);
}

static void test_invalid_count(void) {
    test_begin("tokenizer_invalid_utf8_count");
    Tokenizer *tok = tiny_tok("gpt4", 300);
    if (tok) {
        TokIds ids = {0};
        MoeErr err;
        const char s[] = "ok\xff\xfe ok \xc3 and \xed\xa0\x80 \0NUL";
        tokenizer_encode(tok, s, sizeof(s) - 1, 0, &ids, &err);
        CHECK(tokenizer_invalid_utf8(tok) == 3, "invalid sequences %lld, expected 3", (long long)tokenizer_invalid_utf8(tok));
        CHECK(roundtrip(tok, s, sizeof(s) - 1, 0), "round trip");
        tokenizer_reset_invalid_utf8(tok);
        CHECK(tokenizer_invalid_utf8(tok) == 0, "reset");
        tok_ids_free(&ids);
        tokenizer_free(tok);
    } else {
        CHECK(0, "tiny tokenizer");
    }
    test_end();
}

static void test_special(void) {
    test_begin("tokenizer_special_tokens");
    Tokenizer *tok = tiny_tok("gpt4", 400);
    if (!tok) {
        CHECK(0, "tiny tokenizer");
        test_end();
        return;
    }
    int bos = tokenizer_bos_id(tok), eos = tokenizer_eos_id(tok), pad = tokenizer_pad_id(tok);
    CHECK(bos >= 0 && eos >= 0 && pad >= 0 && bos != eos, "bos %d eos %d pad %d", bos, eos, pad);
    const char *s = "<|begin_of_text|>hello world<|end_of_text|><|pad|>";
    TokIds ids = {0};
    MoeErr err;
    tokenizer_encode(tok, s, strlen(s), TOK_ENCODE_SPECIAL, &ids, &err);
    CHECK(ids.n >= 4 && ids.ids[0] == bos && ids.ids[ids.n - 2] == eos && ids.ids[ids.n - 1] == pad, "special ids in place");
    char *out;
    size_t n;
    tokenizer_decode(tok, ids.ids, ids.n, 1, &out, &n, &err);
    CHECK(n == 11 && memcmp(out, "hello world", 11) == 0, "skip_special decode");
    free(out);
    tokenizer_decode(tok, ids.ids, ids.n, 0, &out, &n, &err);
    CHECK(n == strlen(s) && memcmp(out, s, n) == 0, "full decode");
    free(out);
    ids.n = 0;
    tokenizer_encode(tok, s, strlen(s), 0, &ids, &err);
    int none = 1;
    for (size_t i = 0; i < ids.n; i++) none &= !tokenizer_is_special(tok, ids.ids[i]);
    CHECK(none, "without TOK_ENCODE_SPECIAL the markers are plain text");
    int32_t bad = 100000;
    CHECK(tokenizer_decode(tok, &bad, 1, 0, &out, &n, &err) == -1 && strstr(err.msg, "100000"), "bad id refused");
    CHECK(tokenizer_set_special_ids(tok, 5, 6, -1) == 0 && tokenizer_bos_id(tok) == 5 && tokenizer_pad_id(tok) == -1,
          "set_special_ids");
    tok_ids_free(&ids);
    tokenizer_free(tok);
    test_end();
}

static void test_save_load(void) {
    const char *patterns[] = {"gpt2", "gpt4", "deepseek"};
    size_t clen;
    char *corpus = make_corpus(&clen);
    for (int p = 0; p < 3; p++) {
        char name[64], path[512];
        snprintf(name, sizeof(name), "tokenizer_save_load_%s", patterns[p]);
        snprintf(path, sizeof(path), "%s/tok_%s.json", g_dir, patterns[p]);
        test_begin(name);
        TokTrainConfig cfg;
        tok_train_config_default(&cfg);
        cfg.pattern = patterns[p];
        cfg.vocab_size = 600;
        MoeErr err;
        const char *c = corpus;
        Tokenizer *a = tokenizer_train(&c, &clen, 1, &cfg, &err);
        CHECK(a && tokenizer_save(a, path, &err) == 0, "train+save: %s", err.msg);
        Tokenizer *b = a ? tokenizer_load(path, &err) : NULL;
        CHECK(b != NULL, "load: %s", b ? "" : err.msg);
        if (a && b) {
            TokIds x = {0}, y = {0};
            tokenizer_encode(a, corpus, clen, TOK_ENCODE_SPECIAL, &x, &err);
            tokenizer_encode(b, corpus, clen, TOK_ENCODE_SPECIAL, &y, &err);
            CHECK(x.n == y.n && memcmp(x.ids, y.ids, x.n * sizeof(int32_t)) == 0, "identical ids after load");
            CHECK(tokenizer_vocab_size(a) == tokenizer_vocab_size(b) && tokenizer_n_merges(a) == tokenizer_n_merges(b) &&
                      tokenizer_eos_id(a) == tokenizer_eos_id(b),
                  "same sizes and special ids");
            char *ja = tokenizer_to_json(a, &err), *jb = tokenizer_to_json(b, &err);
            CHECK(ja && jb && strcmp(ja, jb) == 0, "re-saved JSON identical");
            free(ja);
            free(jb);
            tok_ids_free(&x);
            tok_ids_free(&y);
        }
        tokenizer_free(a);
        tokenizer_free(b);
        test_end();
    }
    free(corpus);
}

static void expect_load_error(const char *name, const char *json, const char *want1, const char *want2) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s.json", g_dir, name);
    write_text(path, json);
    MoeErr err = {{0}};
    Tokenizer *tok = tokenizer_load(path, &err);
    CHECK(tok == NULL, "%s: loaded but should fail", name);
    CHECK(strstr(err.msg, path) != NULL, "%s: message does not name the file: %s", name, err.msg);
    CHECK(strstr(err.msg, want1) != NULL && (!want2 || strstr(err.msg, want2) != NULL), "%s: message '%s' lacks '%s'",
          name, err.msg, want1);
    tokenizer_free(tok);
}

static void test_bad_files(void) {
    test_begin("tokenizer_load_bad_files");
    MoeErr err = {{0}};
    char path[512];
    snprintf(path, sizeof(path), "%s/does_not_exist.json", g_dir);
    CHECK(tokenizer_load(path, &err) == NULL && strstr(err.msg, "does_not_exist.json"), "missing file: %s", err.msg);
    expect_load_error("empty", "", "empty", NULL);
    expect_load_error("notjson", "this is { not json", "not valid JSON", NULL);
    expect_load_error("array", "[1,2,3]", "top level", NULL);
    expect_load_error("nomodel", "{\"version\":\"1.0\"}", "model", NULL);
    expect_load_error("wordpiece",
                      "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}},\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}",
                      "WordPiece", "not supported");
    expect_load_error("unigram", "{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", "Unigram", NULL);
    expect_load_error("nomerges",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}},\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}",
                      "model.merges", NULL);
    expect_load_error("badmerge",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\",\"a q\"]},"
                      "\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}",
                      "merges[1]", "'q'");
    expect_load_error("badmerge_result",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]},"
                      "\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}",
                      "merges[0]", "'ab'");
    expect_load_error("badmerge_format",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a\"]},\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}",
                      "merges[0]", NULL);
    expect_load_error("nfc",
                      "{\"normalizer\":{\"type\":\"NFC\"},\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},"
                      "\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}",
                      "normalizer", "NFC");
    expect_load_error("metaspace",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Metaspace\"}}",
                      "Metaspace", NULL);
    expect_load_error("no_bytelevel",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Digits\"}}",
                      "ByteLevel", NULL);
    expect_load_error("bytefallback",
                      "{\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{},\"merges\":[]},"
                      "\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}",
                      "byte_fallback", NULL);
    expect_load_error("badid",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}",
                      "model.vocab", NULL);
    expect_load_error("hugeid",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":2000000000},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}",
                      "model.vocab", NULL);
    expect_load_error("dupid",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}",
                      "used by two", NULL);
    expect_load_error("badregex",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Sequence\","
                      "\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(oops\"},\"behavior\":\"Isolated\"},"
                      "{\"type\":\"ByteLevel\"}]}}",
                      "regex", NULL);
    expect_load_error("badbehavior",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Sequence\","
                      "\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},\"behavior\":\"Sideways\"},"
                      "{\"type\":\"ByteLevel\"}]}}",
                      "Sideways", NULL);
    expect_load_error("baddecoder",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"ByteLevel\"},"
                      "\"decoder\":{\"type\":\"WordPiece\"}}",
                      "decoder", NULL);
    expect_load_error("badadded",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"ByteLevel\"},"
                      "\"added_tokens\":[{\"id\":0}]}",
                      "added_tokens[0]", NULL);
    test_end();
}

static void test_tokenizer_config(void) {
    test_begin("tokenizer_config_json_special_ids");
    char dir[512], path[600], cfg[600];
    snprintf(dir, sizeof(dir), "%s/withcfg", g_dir);
    MoeErr err;
    make_dirs(dir, &err);
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    snprintf(cfg, sizeof(cfg), "%s/tokenizer_config.json", dir);
    const char *json =
        "{\"added_tokens\":[{\"id\":2,\"content\":\"<|endoftext|>\",\"special\":true},"
        "{\"id\":3,\"content\":\"<|im_end|>\",\"special\":true}],"
        "\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[]}}";
    write_text(path, json);
    Tokenizer *tok = tokenizer_load(path, &err);
    CHECK(tok && tokenizer_bos_id(tok) == 2 && tokenizer_eos_id(tok) == 2, "guessed from names");
    tokenizer_free(tok);
    write_text(cfg, "{\"bos_token\": null, \"eos_token\": {\"content\": \"<|im_end|>\"}, \"pad_token\": \"<|endoftext|>\"}");
    tok = tokenizer_load(path, &err);
    CHECK(tok && tokenizer_bos_id(tok) == -1 && tokenizer_eos_id(tok) == 3 && tokenizer_pad_id(tok) == 2,
          "from tokenizer_config.json");
    tokenizer_free(tok);
    write_text(cfg, "{not json");
    tok = tokenizer_load(path, &err);
    CHECK(tok == NULL && strstr(err.msg, "tokenizer_config.json"), "bad tokenizer_config.json named: %s", err.msg);
    tokenizer_free(tok);
    test_end();
}

static void test_split_behaviors(void) {
    test_begin("tokenizer_split_behaviors");
    // Split on "-" with each behaviour, then ByteLevel(use_regex=false); check pieces
    const char *beh[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    const char *want[5][8] = {
        {"a", "-", "b", "-", "-", "c", NULL},
        {"a", "b", "c", NULL},
        {"a-", "b-", "-", "c", NULL},
        {"a", "-b", "-", "-c", NULL},
        {"a", "-", "b", "--", "c", NULL},
    };
    for (int k = 0; k < 5; k++) {
        char json[1024];
        snprintf(json, sizeof(json),
                 "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Sequence\","
                 "\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"String\":\"-\"},\"behavior\":\"%s\",\"invert\":false},"
                 "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]}}",
                 beh[k]);
        MoeErr err;
        Tokenizer *tok = tokenizer_load_json(json, strlen(json), "split.json", &err);
        CHECK(tok != NULL, "%s: %s", beh[k], tok ? "" : err.msg);
        if (!tok) continue;
        TokSplitter sp;
        tok_splitter_init(&sp);
        PieceCollector c = {0};
        tok_presplit(tok, &sp, "a-b--c", 6, collect, &c);
        int n = 0;
        while (want[k][n]) n++;
        int ok = c.n == n;
        for (int i = 0; ok && i < n; i++) ok = strcmp(c.pieces[i], want[k][i]) == 0;
        if (!ok) {
            printf("  %s gave:", beh[k]);
            for (int i = 0; i < c.n; i++) printf(" [%s]", c.pieces[i]);
            printf("\n");
        }
        CHECK(ok, "behavior %s", beh[k]);
        tok_splitter_free(&sp);
        tokenizer_free(tok);
    }
    test_end();
}

static void test_train_deterministic(void) {
    test_begin("tokenizer_train_chunking_invariant");
    size_t clen;
    char *corpus = make_corpus(&clen);
    TokTrainConfig cfg;
    tok_train_config_default(&cfg);
    cfg.vocab_size = 500;
    MoeErr err;
    const char *c = corpus;
    Tokenizer *a = tokenizer_train(&c, &clen, 1, &cfg, &err);
    // the same text fed in chunks cut at newlines (the gpt4 pattern never spans "\n" + letter)
    TokTrainer *tr = tok_trainer_new(&cfg, &err);
    size_t off = 0;
    while (off < clen) {
        size_t end = off + 1000 < clen ? off + 1000 : clen;
        while (end < clen && corpus[end - 1] != '\n') end++;
        while (end < clen && (corpus[end] == '\n' || corpus[end] == '\r')) end++;
        tok_trainer_feed(tr, corpus + off, end - off, &err);
        off = end;
    }
    Tokenizer *b = tok_trainer_finish(tr, &err);
    tok_trainer_free(tr);
    char *ja = a ? tokenizer_to_json(a, &err) : NULL, *jb = b ? tokenizer_to_json(b, &err) : NULL;
    CHECK(ja && jb && strcmp(ja, jb) == 0, "chunked training gives the same tokenizer");
    free(ja);
    free(jb);
    tokenizer_free(a);
    tokenizer_free(b);
    free(corpus);
    test_end();
}

// DeepSeek-style added tokens: bos/eos/pad found by name, matched leftmost-longest
static void test_deepseek_specials(void) {
    test_begin("tokenizer_deepseek_special_names");
    const char *json =
        "{\"added_tokens\":["
        "{\"id\":4,\"content\":\"<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>\",\"special\":true,\"normalized\":true},"
        "{\"id\":5,\"content\":\"<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>\",\"special\":true},"
        "{\"id\":6,\"content\":\"<\xef\xbd\x9c\xe2\x96\x81pad\xe2\x96\x81\xef\xbd\x9c>\",\"special\":true},"
        "{\"id\":7,\"content\":\"<|x|>\",\"special\":false},{\"id\":8,\"content\":\"<|x|>y\",\"special\":false}],"
        "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[]},"
        "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false},"
        "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[]},"
        "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"<\":2,\">\":3},\"merges\":[]}}";
    MoeErr err;
    Tokenizer *tok = tokenizer_load_json(json, strlen(json), "ds.json", &err);
    CHECK(tok != NULL, "load: %s", tok ? "" : err.msg);
    if (tok) {
        CHECK(tokenizer_bos_id(tok) == 4 && tokenizer_eos_id(tok) == 5 && tokenizer_pad_id(tok) == 6, "bos/eos/pad %d %d %d",
              tokenizer_bos_id(tok), tokenizer_eos_id(tok), tokenizer_pad_id(tok));
        TokIds ids = {0};
        const char *s = "a<|x|>yb<|x|>a";
        tokenizer_encode(tok, s, strlen(s), TOK_ENCODE_SPECIAL, &ids, &err);
        CHECK(ids.n == 5 && ids.ids[0] == 0 && ids.ids[1] == 8 && ids.ids[2] == 1 && ids.ids[3] == 7 && ids.ids[4] == 0,
              "leftmost-longest added tokens (%zu ids)", ids.n);
        CHECK(!tokenizer_is_special(tok, 7) && tokenizer_is_special(tok, 5), "special flags");
        char *js = tokenizer_to_json(tok, &err);
        CHECK(js && strstr(js, "TemplateProcessing"), "post_processor kept when saving");
        free(js);
        tok_ids_free(&ids);
        tokenizer_free(tok);
    }
    test_end();
}

static void test_fuzz_loader(void) {
    test_begin("tokenizer_fuzz_json_loader");
    // seed: a trained tokenizer's JSON plus the tiny one; mutate bytes, truncate, splice
    const char *text = "hello world, hello tokens 123";
    size_t tl = strlen(text);
    TokTrainConfig cfg;
    tok_train_config_default(&cfg);
    cfg.vocab_size = 270;
    MoeErr err;
    Tokenizer *t = tokenizer_train(&text, &tl, 1, &cfg, &err);
    char *seed_big = t ? tokenizer_to_json(t, &err) : NULL;
    tokenizer_free(t);
    const char *seeds[2] = {TINY_JSON, seed_big ? seed_big : TINY_JSON};
    uint64_t rng = rng_seed(12345);
    double t0 = wall_seconds();
    int loaded = 0, iters = 0, bad_rt = 0;
    char *buf = malloc(1 << 16);
    while (wall_seconds() - t0 < 2.0 && iters < 20000) {
        const char *seed = seeds[iters % 2];
        size_t n = strlen(seed);
        if (n >= (1 << 16) - 64) n = (1 << 16) - 64;
        memcpy(buf, seed, n);
        int muts = 1 + (int)(rng_next_u64(&rng) % 4);
        for (int m = 0; m < muts; m++) {
            uint64_t r = rng_next_u64(&rng);
            size_t pos = n ? (size_t)(r % n) : 0;
            switch ((r >> 32) % 5) {
            case 0: buf[pos] = (char)(r >> 40); break;
            case 1: n = pos; break;  // truncate
            case 2: buf[pos] = "{}[]\",:0-9ae \\"[(r >> 40) % 15]; break;
            case 3: if (n + 8 < (1 << 16)) { memmove(buf + pos + 1, buf + pos, n - pos); buf[pos] = (char)(r >> 48); n++; } break;
            case 4: if (n > pos + 1) { memmove(buf + pos, buf + pos + 1, n - pos - 1); n--; } break;
            }
        }
        Tokenizer *tok = tokenizer_load_json(buf, n, "fuzz.json", &err);
        if (tok) {
            loaded++;
            const char *s = "abc hello <|eot|> wor\xffld 12";
            if (!roundtrip(tok, s, strlen(s), 0)) {
                // a mutated vocab may lack bytes (HF drops them): then only require no crash
                bad_rt++;
            }
            tokenizer_free(tok);
        } else {
            CHECK(strstr(err.msg, "fuzz.json") != NULL, "error message names the file: %s", err.msg);
        }
        iters++;
    }
    free(buf);
    free(seed_big);
    printf("  fuzz: %d inputs, %d loaded, %d of those lacked bytes for a round trip\n", iters, loaded, bad_rt);
    CHECK(iters > 100, "fuzz ran %d iterations", iters);
    test_end();
}

int main(void) {
    snprintf(g_dir, sizeof(g_dir), "/tmp/test_tokenizer_%d", (int)getpid());
    MoeErr err;
    if (make_dirs(g_dir, &err) != 0) {
        printf("FAIL tokenizer_setup: %s\n", err.msg);
        return 1;
    }
    test_byte_map();
    test_utf8();
    test_presplit();
    test_tiny_vocab();
    test_prefix_space();
    test_long_pieces();
    test_train_first_merges();
    test_roundtrip();
    test_invalid_count();
    test_special();
    test_save_load();
    test_bad_files();
    test_tokenizer_config();
    test_split_behaviors();
    test_train_deterministic();
    test_deepseek_specials();
    test_fuzz_loader();
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) printf("  (could not remove %s)\n", g_dir);
    return test_summary();
}
